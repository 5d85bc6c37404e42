"""Settings as data: to and from plain dicts (a run folder's config.json), typed checks of YAML values, presets,
and the former names of settings that moved."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from gtpo.config.sections import TrainConfig

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


class ConfigError(ValueError):
    """A setting is unknown or invalid. The message names the field and how to fix it."""


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (saved in the run directory)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Overlay ``data`` on ``base`` (default: the defaults), refusing unknown fields by name. Settings under
    their former names (``RENAMED``: a run folder's config.json or a preset written before) are read too."""
    return _overlay(base or TrainConfig(), renamed(data), prefix="")


RENAMED: dict[str, str] = {
    **{f"rollout.{name}": f"generation.{name}" for name in (
        "backend", "engine_slots", "engine_chunk", "engine_cuda_graphs", "schedule", "rejoin_steps",
        "vllm_gpu_memory_utilization",
    )},
    "rollout.sandbox_timeout_s": "sandbox.timeout_s",
    "rollout.sandbox_memory_mb": "sandbox.memory_mb",
    "rollout.sandbox_workers": "sandbox.workers",
    "rollout.filter_void": "filter.void",
    "rollout.filter_groups": "filter.groups",
    "rollout.filter_metric": "filter.metric",
    "rollout.filter_max_extra_problems": "filter.max_extra_problems",
    "rollout.overlong": "overlong.mode",
    "rollout.overlong_buffer": "overlong.buffer",
    "rollout.overlong_penalty": "overlong.penalty",
    "rollout.eval_temperature": "eval.temperature",
    "rollout.eval_samples": "eval.samples",
}  # fmt: skip
"""Former dotted name -> its name now (settings were grouped by concern)."""
RETIRED = {"optim.micro_batch_size": "optim.micro_batch_tokens decides how trajectories are packed"}
"""Former settings with no successor, and why."""


def renamed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with former names moved to their current place (a current name given too wins); a retired
    setting at its old default (0) is dropped, any other value is refused with the reason."""
    if not isinstance(data, dict):
        return data
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for old, new in RENAMED.items():
        section, name = old.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            value = out[section].pop(name)
            target, field_name = new.split(".")
            place = out.setdefault(target, {})
            if isinstance(place, dict):
                place.setdefault(field_name, value)
    for old, why in RETIRED.items():
        section, name = old.split(".")
        present = isinstance(out.get(section), dict) and name in out[section]
        if present and out[section].pop(name) not in (0, None):
            raise ConfigError(f"config field '{old}' was retired: {why}; remove it")
    return out


def renamed_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Command-line flags under their former names rewritten to the current ones, and a note for each."""
    flags = {}
    for old, new in RENAMED.items():
        (old_section, old_name), (new_section, new_name) = old.split("."), new.split(".")
        dash = lambda s: s.replace("_", "-")  # noqa: E731
        flags[f"--{old_section}.{dash(old_name)}"] = f"--{new_section}.{dash(new_name)}"
        flags[f"--{old_section}.no-{dash(old_name)}"] = f"--{new_section}.no-{dash(new_name)}"
    out, notes = [], []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        if flag in flags:
            notes.append(f"note: {flag} is now {flags[flag]}")
            arg = flags[flag] + sep + value
        out.append(arg)
    return out, notes


def _overlay(obj: Any, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    updates = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config field '{prefix}{key}'. Known fields here: {known}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            updates[key] = _overlay(current, value, prefix=f"{prefix}{key}.")
        else:
            updates[key] = _typed(f"{prefix}{key}", value, hints[key])
    return dataclasses.replace(obj, **updates)


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's declared type, or a ConfigError naming the field and the type it needs.

    A preset is YAML, whose types need not be the dataclass's: a wrong one (``lr: abc``) must fail here with the
    field's name, not later as a ``TypeError`` deep in validation or training. ``1e-6`` (a string to YAML 1.1)
    and ``1`` for a float are accepted as the numbers they mean; a list for a tuple becomes the tuple."""
    converted = _convert(value, hint)
    if converted is _WRONG:
        raise ConfigError(
            f"invalid config field '{name}': expected {_type_name(hint)}, got {value!r}; fix it in the preset"
        )
    return converted


_WRONG = object()


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            converted = _convert(value, arm)
            if converted is not _WRONG:
                return converted
        return _WRONG
    if hint is type(None):
        return None if value is None else _WRONG
    if origin is Literal:
        return value if value in args else _WRONG
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _WRONG
        arms = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(arms) != len(value):
            return _WRONG
        items = [_convert(v, a) for v, a in zip(value, arms, strict=True)]
        return _WRONG if any(i is _WRONG for i in items) else tuple(items)
    if hint is bool:
        return value if isinstance(value, bool) else _WRONG
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if hint is float:
        if isinstance(value, bool):
            return _WRONG
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value) if isinstance(value, str) else _WRONG
        except ValueError:
            return _WRONG
    if hint is str:
        return value if isinstance(value, str) else _WRONG
    return value


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def load_preset(name_or_path: str, base: TrainConfig | None = None) -> TrainConfig:
    """Load a YAML preset: a file path, or the name of a shipped preset (``gtpo/presets/NAME.yaml``).

    Only a *file* shadows a shipped name: ``--preset multistep`` run beside a folder named ``multistep`` (a
    comparison's output, say) still means the shipped preset.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"--preset {name_or_path!r}: no such file or shipped preset (shipped: {shipped})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--preset {where}: not valid YAML ({problem}); fix the file") from None
    try:
        return from_dict(data, base)
    except ConfigError as err:
        raise ConfigError(f"--preset {path}: {err}") from None
