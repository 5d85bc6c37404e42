"""Warm-start traces for GEM's GuessTheNumber: scripted players whose games are played through GEM itself.

Each trace is a real game: GEM's instructions from ``reset``, then the player's messages and GEM's observations
as ``gtpo.envs.gem.GemEnv`` returns them to a rollout (with GEM's suffix "Enter your next guess."), until GEM
ends the game. No text of GEM's is copied here; the player reads GEM's messages as the model will.

A player's message states what it still believes and then its guess, ``37 < x < 62. \\boxed{49}``: the bounds
are exclusive, so updating the belief copies a number GEM printed into one slot (no arithmetic), and the state
a ~1M-parameter model must carry from turn to turn is written out in its own previous message. The first
message reads the game's range off the instructions (``between 1 and 100`` -> ``0 < x < 101``).

Skills are mixed turn by turn (``Skill``), so that the warm-started model plays imperfectly and RL has room:
a guess is the midpoint of the belief or a random point inside it; the belief update is sometimes skipped (a
stale belief: the guess may repeat an earlier one, which GEM rejects as an invalid move) or reads the hint
backwards (a belief that excludes the target). Every slip is recoverable: a belief that becomes empty is
widened to the game's edge on that side (``believe``), and after a rejected guess the player picks another
point of its belief. Games of several ranges (``GAMES``) teach one model the easy game and a long one.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from gtpo.envs.gem import SYSTEM_PROMPT, GemEnv
from gtpo.envs.options import HELDOUT_SEED

GAME = "game:GuessTheNumber-v0-easy"
"""GEM's id; its options (``max_number``, ``max_turns``) give the other ranges."""
EASY = f"gem:{GAME}"
"""GEM's easy game: a number from 1 to 10 in 4 guesses (binary search needs all 4 for some targets)."""
LONG = f"gem:{GAME}?max_number=20&max_turns=7"
"""The long game: 1 to 20 in 7 guesses (binary search needs up to 5), so a wasted early guess costs later."""
GAMES: dict[int, tuple[int, ...]] = {10: (4,), 20: (5,), 50: (7,), 100: (8, 9, 10)}
"""The traces' ranges (1 to the key) and turn budgets (one drawn per game)."""
__all__ = ["EASY", "GAMES", "LONG", "SKILLS", "SYSTEM_PROMPT", "GameTrace", "Skill", "believe", "make_traces", "play"]

_RANGE = re.compile(r"between (\d+) and (\d+)")
_HINT = re.compile(r"you guessed (\d+), and the target number is (higher|lower) than")


@dataclass(frozen=True)
class Skill:
    """How a scripted player plays, turn by turn (each a probability)."""

    midpoint: float
    """A guess is the belief's midpoint; otherwise a uniformly random point inside it."""
    stale: float
    """The turn ignores the last hint: the belief stays as it was."""
    flip: float
    """The turn reads the hint backwards ("higher than 50" -> ``x < 50``)."""


SKILLS: dict[int, Skill] = {
    10: Skill(midpoint=0.5, stale=0.5, flip=0.2),
    20: Skill(midpoint=0.5, stale=0.35, flip=0.15),
    50: Skill(midpoint=0.5, stale=0.25, flip=0.1),
    100: Skill(midpoint=0.5, stale=0.15, flip=0.05),
}
"""The warm start's mix by range (the key: the game's largest number), calibrated so that the held-out start
of both presets lies in [0.20, 0.40]. Slips are more frequent on the small ranges: 4 guesses for 1 to 10 leave
no turn to spare, while a long game leaves turns to recover, and one mix cannot start both in that band."""


@dataclass
class GameTrace:
    """One game: GEM's first observation, then (player message, GEM's observation after it) pairs; the last
    message has no observation (GEM ended the game, and the rollout appends nothing after the last step)."""

    seed: int
    options: dict[str, int]
    observation: str
    turns: list[tuple[str, str | None]] = field(default_factory=list)
    success: bool = False


def believe(low: int, high: int, guess: int, higher: bool, top: int) -> tuple[int, int]:
    """The belief ``low < x < high`` after GEM said the target is ``higher`` (or lower) than ``guess``.

    The hint's number replaces one bound. A belief left with no integer inside (a slip excluded the target)
    is widened to the game's edge on the hint's side (``top`` is the game's largest number), and to the whole
    game if that is still empty: the next guesses then search where the target can be."""
    if higher:
        low = guess
        if high - low < 2:
            high = top + 1
    else:
        high = guess
        if high - low < 2:
            low = 0
    if high - low < 2:
        return 0, top + 1
    return low, high


def message(low: int, high: int, guess: int) -> str:
    """A player's turn: its belief, then its guess."""
    return f"{low} < x < {high}. \\boxed{{{guess}}}"


class Player:
    """A scripted player: reads GEM's messages, keeps an exclusive interval, guesses with ``skill``."""

    def __init__(self, rng: random.Random, skill: Skill) -> None:
        self.rng, self.skill = rng, skill
        self.low = self.high = self.top = 0
        self.last: int | None = None

    def move(self, observation: str) -> str:
        """The next message after GEM's ``observation`` (the instructions on the first turn)."""
        hint = _HINT.search(observation)
        start = _RANGE.search(observation)
        if self.last is None and start is not None:
            first, self.top = int(start.group(1)), int(start.group(2))
            self.low, self.high = first - 1, self.top + 1
        elif hint is not None:
            roll = self.rng.random()
            if roll >= self.skill.stale:
                higher = (hint.group(2) == "higher") != (roll < self.skill.stale + self.skill.flip)
                self.low, self.high = believe(self.low, self.high, int(hint.group(1)), higher, self.top)
        inside = list(range(self.low + 1, self.high))
        if hint is None and self.last is not None:  # GEM rejected the guess (no hint): try another point
            inside = [g for g in inside if g != self.last] or inside
            guess = self.rng.choice(inside)
        elif self.rng.random() < self.skill.midpoint:
            guess = (self.low + self.high) // 2
        else:
            guess = self.rng.choice(inside)
        self.last = guess
        return message(self.low, self.high, guess)


def play(env: GemEnv, seed: int, options: dict[str, int], rng: random.Random, skill: Skill) -> GameTrace:
    """One game of ``env`` (GEM with ``options``) from reset seed ``seed``, played by a scripted player."""
    observation, _ = env.reset(seed=seed)
    trace = GameTrace(seed, dict(options), observation)
    player = Player(rng, skill)
    for _ in range(options["max_turns"]):
        text = player.move(observation)
        observation, _, terminated, truncated, info = env.step(text)
        ended = terminated or truncated
        trace.turns.append((text, None if ended else observation))
        if ended:
            trace.success = bool(info["success"])
            break
    return trace


def make_traces(n: int, seed: int, skills: dict[int, Skill] = SKILLS) -> list[GameTrace]:
    """``n`` games over ``GAMES`` (range uniform, then a turn budget), played with ``skills`` of their range,
    from reset seeds below the held-out ones."""
    rng = random.Random(seed)
    envs: dict[tuple[int, int], GemEnv] = {}
    traces = []
    for _ in range(n):
        top = rng.choice(sorted(GAMES))
        options = {"max_number": top, "max_turns": rng.choice(GAMES[top])}
        key = (top, options["max_turns"])
        if key not in envs:
            envs[key] = GemEnv(GAME, options)
        traces.append(play(envs[key], rng.randrange(HELDOUT_SEED), options, rng, skills[top]))
    return traces
