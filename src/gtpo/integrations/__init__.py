"""Integrations of gtpo with other RL engines.

Each integration lives in its own modules and imports its engine only there, so ``import gtpo`` never
needs an optional engine. ``gtpo.integrations.verl`` is the verl one (see docs/verl.md).
"""
