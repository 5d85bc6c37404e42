"""GEM's gym-style language environments as a data source: ``--data.train gem:ENV_ID[?option=value&...]``.

GEM (``gem-llm``, offline for its games: ``game:GuessTheNumber-v0-easy``, ``game:Mastermind-v0-easy``,
``game:Minesweeper-v0-easy``, ``game:Game2048-v0-easy``, ``game:Sokoban-v0-easy``, ...) is installed by
``scripts/install-gem.sh``: its own pins (reasoning-gym 0.1.23, msgspec 0.19.0, nltk) clash with gtpo's, and the
games need none of them, so it goes in without its dependencies (docs/environments.md).

Options after ``?`` go to ``gem.make`` (``max_number=100&max_turns=10``), values read as YAML scalars, except
the source's own, ``problems`` (how many instances) and ``seed`` (the first reset seed): see
``gtpo.envs.options``. A problem is one reset seed; the G trajectories of a group play the same instance.

What the adapter adds to GEM, and why:
- observations are chat messages of the user role (GEM's games speak to the player); a step's observation ends
  with GEM's ``suffix`` ("Enter your next guess."), as GEM's own observation wrappers show it;
- ``info["invalid_action"]``: GEM marks an invalid move only by its reward (``LanguageGameReward``'s
  ``invalid_action_reward``, 0.0, the same as an ordinary step) and a format error by ``format_error_reward``. While
  a step runs, the two class attributes hold sentinel values that no game computes, so the adapter can tell them
  apart; the reward is then reported with GEM's real value;
- ``info["success"]``: the game ended with at least ``success_reward``;
- determinism: GEM's games draw from Python's global ``random`` (and NumPy's) and ``reset(seed)`` seeds those. The
  adapter runs every GEM call under one lock, with the instance's own saved random state swapped in and the
  process's restored after, so games never interleave their draws and each seed replays the same game, whatever
  else runs.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from gtpo.config import ConfigError
from gtpo.envs.base import ANSWER, INVALID_ACTION, SUCCESS, TOOL_CALL, EnvFactory
from gtpo.envs.options import parse_source, seeded_problems, split_own
from gtpo.tools import extract_boxed
from gtpo.types import Problem

PREFIX = "gem:"
SYSTEM_PROMPT = "You are playing a game. Read each message and reply with your next move as the game asks."
INSTALL_HINT = "install GEM with `sh scripts/install-gem.sh` (docs/environments.md)"

_LOCK = threading.Lock()
_INVALID_SENTINEL = -987654.125
_FORMAT_SENTINEL = -987654.375


def is_source(name: str) -> bool:
    return name.startswith(PREFIX)


def _gem() -> Any:
    """GEM, imported without the side effect of its import: it configures the root logger at INFO, which would
    print every library's INFO records for the rest of the run."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import gem
    except ImportError:
        raise ConfigError(f"GEM environments need the gem-llm package; {INSTALL_HINT}") from None
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    return gem


class GemEnv:
    """One GEM environment instance behind gtpo's interface (see the module docstring)."""

    observation_role = "user"
    stop_at_code_block = False
    uses_tools = False
    system_prompt = SYSTEM_PROMPT

    def __init__(self, env_id: str, options: dict[str, Any]) -> None:
        gem = _gem()
        self.env_id = env_id
        with _LOCK, _own_random(None) as state:
            self.env = gem.make(env_id, **options)
        self._random = state

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        with _LOCK, _own_random(None) as state:
            observation, _ = self.env.reset(seed=seed)
        self._random = state
        return observation, {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        from gem.utils.constants import LanguageGameReward as rewards

        with _LOCK, _own_random(self._random) as state:
            # GEM's real values, read under the lock: read outside it, they could be another step's sentinels,
            # which this step would then restore for good.
            invalid_value, format_value = rewards.invalid_action_reward, rewards.format_error_reward
            rewards.invalid_action_reward, rewards.format_error_reward = _INVALID_SENTINEL, _FORMAT_SENTINEL
            try:
                observation, reward, terminated, truncated, info = self.env.step(action)
            finally:
                rewards.invalid_action_reward, rewards.format_error_reward = invalid_value, format_value
        self._random = state
        reward = float(reward)
        invalid = reward in (_INVALID_SENTINEL, _FORMAT_SENTINEL)
        if reward == _INVALID_SENTINEL:
            reward = float(invalid_value)
        elif reward == _FORMAT_SENTINEL:
            reward = float(format_value)
        ended = bool(terminated or truncated)
        suffix = (info or {}).get("suffix")
        if suffix and not ended:
            observation = f"{observation.rstrip()}\n{suffix}"
        out = {
            INVALID_ACTION: invalid,
            TOOL_CALL: True,
            ANSWER: extract_boxed(action),
            SUCCESS: ended and reward >= rewards.success_reward,
        }
        return observation, reward, bool(terminated), bool(truncated), out


@contextmanager
def _own_random(saved: tuple[Any, Any] | None) -> Iterator[list[Any]]:
    """Run with ``saved`` (an instance's (random, NumPy) states; None: the current ones) as the global random
    states, yield a list that receives the states it left, and restore the process's own."""
    outer = (random.getstate(), np.random.get_state())
    if saved is not None:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    left: list[Any] = []
    try:
        yield left
    finally:
        left.extend([random.getstate(), np.random.get_state()])
        random.setstate(outer[0])
        np.random.set_state(outer[1])


def parse(source: str, field: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``gem:ID?problems=N&seed=S&opt=v`` -> (ID, the source's own options, the options for gem.make)."""
    env_id, options = parse_source(source.removeprefix(PREFIX), source, field, "name a GEM environment id")
    own, options = split_own(options)
    return env_id, own, options


def problems(source: str, field: str, *, heldout: bool, run_seed: int = 0) -> list[Problem]:
    """The instances (reset seeds) of a GEM source for training or the held-out set; checks the id first."""
    env_id, own, options = parse(source, field)
    gem = _gem()
    try:
        with _LOCK, _own_random(None):
            gem.make(env_id, **options)
    except Exception as err:  # an unknown id or option: GEM's own message names it
        raise ConfigError(f"{field} {source!r}: GEM refused it ({type(err).__name__}: {err})") from None
    return seeded_problems(env_id, source, field, own, heldout=heldout, run_seed=run_seed)


def factory(source: str, field: str) -> EnvFactory:
    """A fresh ``GemEnv`` per trajectory."""
    env_id, _, options = parse(source, field)

    def make(problem: Problem) -> GemEnv:
        return GemEnv(env_id, options)

    return make
