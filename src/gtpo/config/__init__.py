"""Typed training configuration: one dataclass per concern (``sections``), parsed by tyro; presets and run
folders as dicts (``files``); value checks (``validate``).

Real-model recipes live as presets in ``gtpo/presets/*.yaml`` and are loaded with ``--preset NAME_OR_PATH``;
command-line flags override a preset. This package only describes and validates settings; it runs nothing.
"""

from gtpo.config.files import PRESET_DIR, ConfigError, from_dict, load_preset, renamed_flags, to_dict
from gtpo.config.sections import (
    AlgoConfig,
    DataConfig,
    EvaluationConfig,
    FilterConfig,
    GenerationConfig,
    ModelConfig,
    OptimConfig,
    OverlongConfig,
    RolloutConfig,
    SandboxConfig,
    TrainConfig,
)
from gtpo.config.validate import validate

__all__ = [
    "PRESET_DIR",
    "AlgoConfig",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "FilterConfig",
    "GenerationConfig",
    "ModelConfig",
    "OptimConfig",
    "OverlongConfig",
    "RolloutConfig",
    "SandboxConfig",
    "TrainConfig",
    "from_dict",
    "load_preset",
    "renamed_flags",
    "to_dict",
    "validate",
]
