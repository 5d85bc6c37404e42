"""``python -m gtpo`` is the ``gtpo`` command."""

from gtpo.cli import main

if __name__ == "__main__":
    main()
