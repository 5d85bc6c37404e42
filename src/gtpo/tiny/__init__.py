"""The shipped tiny models: how they are built (``tiny.build``: tokenizer, model, supervised warm start). Where
they live and their aliases: ``gtpo.model.shipped`` (named here too)."""

from gtpo.model.shipped import (
    ASSETS,
    CODE_MODEL_DIR,
    DEFAULT_MODEL_DIR,
    GUESS_MODEL_DIR,
    MULTISTEP_MODEL_DIR,
    RELAY_MODEL_DIR,
    SHIPPED_MODELS,
)

__all__ = [
    "ASSETS",
    "CODE_MODEL_DIR",
    "DEFAULT_MODEL_DIR",
    "GUESS_MODEL_DIR",
    "MULTISTEP_MODEL_DIR",
    "RELAY_MODEL_DIR",
    "SHIPPED_MODELS",
]
