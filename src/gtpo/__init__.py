"""gtpo: Group Turn Policy Optimization (arXiv 2511.14846) for multi-turn tool-integrated reasoning.

Not to be confused with the two other methods called GTPO (arXiv 2508.03772, 2508.04349). GRPO lives
beside GTPO so both can be compared on the same run.
"""

__version__ = "0.1.0"
