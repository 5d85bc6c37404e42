"""A run's data settings -> its problems, its system prompt, and the environments its trajectories run in.

A ``data.train`` / ``data.eval`` string names either question/answer problems (a built-in task, a file, a data
set, reasoning-gym: ``gtpo.data.problems``), which run in the math tool environment (``gtpo.envs.python_tool``),
code problems (``code:functions``, ``code:humaneval``, ``code:PATH.jsonl``: ``gtpo.envs.code``), or an
environment of its own: ``gem:ENV_ID[?...]`` (``gtpo.envs.gem``) or ``module.path:ClassName[?...]``
(``gtpo.envs.user``), whose problems are reset seeds (``gtpo.envs.options``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from gtpo.config import DataConfig
from gtpo.data.problems import load_eval_problems, load_train_problems
from gtpo.envs import code, gem, user
from gtpo.envs.base import EnvFactory
from gtpo.envs.options import without_own
from gtpo.envs.python_tool import GradeFn, python_tool_envs
from gtpo.tasks import system_prompt_for
from gtpo.tools import DEFAULT_INVALID_STATUSES
from gtpo.types import CodeExecutor, Problem

GENERIC_ENV_PROMPT = "You are an agent in an environment. Read each message and reply with your next action."
"""The system prompt of an environment that declares none."""


def is_env_source(source: str) -> bool:
    """Whether ``source`` names an environment of its own (code problems, a GEM game, a user's class) rather than
    question/answer data for the math tool environment."""
    return code.is_source(source) or gem.is_source(source) or user.is_source(source)


SourceKind = Literal["math", "code", "env"]


def source_kind(source: str) -> SourceKind:
    """What runs ``source``'s episodes: the math tool environment (data; boxed answers), the code environment
    (code problems; a submission ends the episode) or an environment of its own (a GEM game, a user's class)."""
    if code.is_source(source):
        return "code"
    return "env" if is_env_source(source) else "math"


def needs_sandbox(source: str) -> bool:
    """Whether ``source``'s episodes run code in the run's tool sandbox: the math tool environment's data and code
    problems do; a GEM game or a user's class brings whatever it needs itself."""
    return source_kind(source) != "env"


def env_problems(source: str, field: str, *, heldout: bool, run_seed: int = 0) -> list[Problem]:
    """The problems of an environment source (reset seeds, or code problems), for training or the held-out set."""
    module = code if code.is_source(source) else gem if gem.is_source(source) else user
    return module.problems(source, field, heldout=heldout, run_seed=run_seed)


def eval_source(cfg: DataConfig) -> str:
    """``data.eval``, except that an environment in ``data.train`` with ``data.eval`` left at its default is
    evaluated on that environment's held-out seeds (the embedded arithmetic set would mean nothing to it)."""
    if cfg.eval == DataConfig.eval and is_env_source(cfg.train):
        return without_own(cfg.train)  # its own problems/seed chose training instances
    return cfg.eval


def train_problems(cfg: DataConfig, seed: int) -> list[Problem]:
    """The training problems of ``data.train`` (an environment's training seeds, or question/answer data)."""
    if is_env_source(cfg.train):
        return env_problems(cfg.train, "data.train", heldout=False, run_seed=seed)
    return load_train_problems(cfg, seed)


def eval_problems(cfg: DataConfig) -> list[Problem]:
    """The held-out problems of ``eval_source(cfg)``, at most ``data.eval_limit`` of them."""
    source = eval_source(cfg)
    if not is_env_source(source):
        return load_eval_problems(cfg)
    problems = env_problems(source, "data.eval", heldout=True)
    return problems[: cfg.eval_limit] if cfg.eval_limit else problems


def system_prompt(cfg: DataConfig) -> str:
    """``data.system_prompt``, else the training source's own: an environment's ``system_prompt`` attribute (or
    the generic one), or a task's (``gtpo.tasks.system_prompt_for``)."""
    if cfg.system_prompt is None and is_env_source(cfg.train):
        return env_system_prompt(cfg.train, "data.train") or GENERIC_ENV_PROMPT
    return system_prompt_for(cfg)


def env_system_prompt(source: str, field: str) -> str | None:
    """The system prompt an environment source declares (GEM's games have one), or None."""
    if code.is_source(source):
        return code.SYSTEM_PROMPT
    if gem.is_source(source):
        return gem.SYSTEM_PROMPT
    return user.system_prompt(source, field)


def env_factory(
    source: str,
    field: str,
    *,
    sandbox: CodeExecutor | None,
    max_turns: int,
    invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES,
    grade: GradeFn | None = None,
) -> EnvFactory:
    """A fresh environment per trajectory for ``source``: its own class, or the math tool environment over
    ``sandbox`` (with ``max_turns``, ``invalid_statuses`` and ``grade``) for question/answer problems; code
    problems run their tool turns in ``sandbox`` too."""
    if code.is_source(source):
        if sandbox is None:
            raise ValueError(f"{field} {source!r}: code problems need a sandbox for their tool turns")
        reward = code.reward_of(source, field)
        return code.code_envs(sandbox, max_turns=max_turns, reward=reward, invalid_statuses=invalid_statuses)
    if gem.is_source(source):
        return gem.factory(source, field)
    if user.is_source(source):
        return user.factory(source, field)
    if sandbox is None:
        raise ValueError(f"{field} {source!r}: the math tool environment needs a sandbox")
    return python_tool_envs(sandbox, max_turns=max_turns, grade=grade, invalid_statuses=invalid_statuses)
