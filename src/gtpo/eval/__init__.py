"""Held-out evaluation: running problems, interval statistics, reports and the ``gtpo eval`` command."""
