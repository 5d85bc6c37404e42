"""Problems: loading data files and Hugging Face datasets, the seeded problem stream, and answer checking."""

from gtpo.data.load import DataError, load_problems

__all__ = ["DataError", "load_problems"]
