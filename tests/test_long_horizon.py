"""The long-horizon task (preset ``guess-long``: GEM's GuessTheNumber from 1 to 20 in 7 guesses): its horizon,
the delayed consequence of an early choice, and that every wrong guess is recoverable, shown by playing the real
GEM game through gtpo's adapter with scripted players.

- horizon: seven decisions; the best player (bisecting the interval it knows) needs up to 5 guesses, 4 or more on
  most instances, so that two turns are spare and no more;
- delayed consequence: a wasted guess earns the same immediate reward as a good one (0), and costs only later,
  when the turns run out: success falls as more early guesses are wasted;
- recoverable: after any one wasted guess, on any turn, the best continuation still wins every instance; an
  invalid guess (out of range, repeated) does not end the game. (A message with no number at all is GEM's format
  error and ends the game: that is not a decision about the number, and no trained policy makes it often.)
"""

from __future__ import annotations

import re

import pytest

from gtpo.config import load_preset
from gtpo.envs.gem import GemEnv
from gtpo.envs.options import HELDOUT_SEED

pytest.importorskip("gem", reason="GEM is installed by sh scripts/install-gem.sh")

SEEDS = range(HELDOUT_SEED, HELDOUT_SEED + 100)


@pytest.fixture(scope="module")
def game():
    """(GEM id, options) of the preset's training source."""
    source = load_preset("guess-long").data.train
    env_id, _, query = source.removeprefix("gem:").partition("?")
    options = {k: int(v) for k, v in (pair.split("=") for pair in query.split("&"))}
    assert options == {"max_number": 20, "max_turns": 7}
    return env_id, options


def play(game, seed: int, wasted: int = 0, wasted_at: int = 0) -> tuple[bool, int, list[float]]:
    """Bisect the interval the hints leave, except ``wasted`` guesses from turn ``wasted_at`` on, which say the
    smallest number not yet guessed (valid, and nearly uninformative). (won, turns, rewards)."""
    env = GemEnv(*game)
    env.reset(seed=seed)
    low, high, guessed, rewards = 1, game[1]["max_number"], set(), []
    for turn in range(game[1]["max_turns"]):
        if wasted_at <= turn < wasted_at + wasted:
            guess = min(n for n in range(1, game[1]["max_number"] + 1) if n not in guessed)
        else:
            guess = (low + high) // 2
        guessed.add(guess)
        observation, reward, terminated, truncated, info = env.step(f"\\boxed{{{guess}}}")
        rewards.append(reward)
        if terminated or truncated:
            return bool(info["success"]), turn + 1, rewards
        hint = re.search(r"is (higher|lower) than", observation).group(1)
        low, high = (max(low, guess + 1), high) if hint == "higher" else (low, min(high, guess - 1))
    raise AssertionError("GEM did not end the game at its turn limit")


def test_the_best_player_needs_four_or_more_decisions_on_most_instances_and_two_turns_are_spare(game):
    results = [play(game, seed) for seed in SEEDS]
    assert all(won for won, _, _ in results)
    turns = [n for _, n, _ in results]
    assert max(turns) == 5 == game[1]["max_turns"] - 2 and sum(n >= 4 for n in turns) / len(turns) > 0.5, turns


def test_a_wasted_early_guess_is_paid_for_only_when_the_turns_run_out(game):
    success = []
    for wasted in range(6):
        outcomes = [play(game, seed, wasted=wasted) for seed in SEEDS]
        success.append(sum(won for won, _, _ in outcomes) / len(outcomes))
        # the wasted guesses themselves are rewarded like any guess that does not end the game
        assert all(r == 0.0 for won, n, rewards in outcomes for r in rewards[:-1])
    assert success[:3] == [1.0, 1.0, 1.0]  # two spare turns absorb up to two wasted guesses
    assert success[2] > success[3] > success[4] > success[5]  # then every early mistake costs at the end


@pytest.mark.parametrize("turn", range(7))
def test_one_wasted_guess_on_any_turn_is_recoverable(game, turn):
    assert all(play(game, seed, wasted=1, wasted_at=turn)[0] for seed in SEEDS)


def test_an_invalid_guess_does_not_end_the_game(game):
    env = GemEnv(*game)
    env.reset(seed=HELDOUT_SEED)
    for action in ("\\boxed{500}", "\\boxed{10}", "\\boxed{10}"):
        _, reward, terminated, truncated, info = env.step(action)
        if action == "\\boxed{10}" and not info["invalid_action"] and terminated:
            pytest.skip("the seed's number is 10")  # pragma: no cover (not the case for this seed)
        assert not (terminated or truncated) and reward == 0.0
    assert info["invalid_action"]  # the repeat
