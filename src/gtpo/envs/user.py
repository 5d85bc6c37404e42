"""A user's own environment class as a data source: ``--data.train mypkg.envs:MyEnv?size=5``.

``MODULE:CLASS`` is imported (the module must be importable: installed, or on ``PYTHONPATH``); options after ``?``
go to the class's constructor as keyword arguments (YAML scalars), except the source's own ``problems`` and
``seed`` (``gtpo.envs.options``). One instance is made per trajectory and reset with its problem's seed. What the
class must provide: docs/environments.md.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from gtpo.config import ConfigError
from gtpo.envs.base import EnvFactory
from gtpo.envs.options import parse_source, seeded_problems, split_own
from gtpo.types import Problem

_CLASS_SOURCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*(\?.*)?")


def is_source(name: str) -> bool:
    """``module.path:ClassName[?options]`` (and not another source's prefix, which the caller checks first)."""
    return _CLASS_SOURCE.fullmatch(name) is not None


def load(source: str, field: str) -> tuple[type, dict[str, Any], dict[str, Any]]:
    """(the class, the source's own options, the constructor's options); one clear line for each mistake."""
    target, options = parse_source(source, source, field, "name a class as module.path:ClassName")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"{field} {source!r}: cannot import module {module_name!r} ({err}); install it or add its folder to "
            "PYTHONPATH"
        ) from None
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise ConfigError(f"{field} {source!r}: module {module_name!r} has no class {class_name!r}")
    missing = [name for name in ("reset", "step") if not callable(getattr(cls, name, None))]
    if missing:
        raise ConfigError(
            f"{field} {source!r}: {class_name} has no {' or '.join(missing)} method; an environment needs "
            "reset(seed) and step(action) (docs/environments.md)"
        )
    own, kwargs = split_own(options)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{field} {source!r}: {class_name}{inspect.signature(cls)} does not take {err}") from None
    except ValueError:  # no signature to read (a builtin): let the constructor decide
        pass
    return cls, own, kwargs


def problems(source: str, field: str, *, heldout: bool, run_seed: int = 0) -> list[Problem]:
    cls, own, _ = load(source, field)
    return seeded_problems(cls.__name__, source, field, own, heldout=heldout, run_seed=run_seed)


def factory(source: str, field: str) -> EnvFactory:
    cls, _, kwargs = load(source, field)

    def make(problem: Problem) -> Any:
        return cls(**kwargs)

    return make


def system_prompt(source: str, field: str) -> str | None:
    """The class's ``system_prompt`` attribute, if it declares one."""
    cls, _, _ = load(source, field)
    prompt = getattr(cls, "system_prompt", None)
    return prompt if isinstance(prompt, str) else None
