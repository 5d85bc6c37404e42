"""The policy model: loading, precision, log-probabilities (packed and chunked over the LM head)."""
