"""The environment interface: its contract, per-step rewards and observations through the rollout, faults that end
only their own trajectory, GEM's games behind the adapter, and a user's class named on the command line.

The environments here are small scripted ones (the rollout must not care what they are); the sampler is scripted
(exact texts) or the shipped tiny model through the real engine (the streaming driver).
"""

from __future__ import annotations

import random
import re
import threading
import time

import numpy as np
import pytest
from conftest import ScriptedSampler

from gtpo.config import ConfigError
from gtpo.envs.base import EnvContractError, checked_reset, checked_step
from gtpo.envs.options import HELDOUT_SEED, without_own
from gtpo.envs.sources import env_factory, env_problems, is_env_source
from gtpo.model.policy import prompt_ids
from gtpo.rollout.episode import rollout
from gtpo.rollout.metrics import rollout_metrics
from gtpo.rollout.spec import EpisodeSpec
from gtpo.types import Problem

SYSTEM = "Play."


class Countdown:
    """Say the numbers down from ``start``: each right number earns 0.25, a wrong one is an invalid action (no
    reward, the episode goes on); reaching 0 ends it with success."""

    def __init__(self, start: int = 3) -> None:
        self.start = start

    def reset(self, seed=None):
        self.next = self.start + (seed or 0)
        return f"Count down from {self.next}."

    def step(self, action):
        said = re.search(r"\d+", action)
        if said is None or int(said.group()) != self.next:
            return f"No: say {self.next}.", 0.0, False, False, {"invalid_action": True}
        self.next -= 1
        if self.next < 0:
            return "Done!", 1.0, True, False, {"success": True}
        return f"Now {self.next}.", 0.25, False, False, {}


def each(cls):
    """The factory that makes a fresh ``cls()`` for every trajectory."""
    return lambda problem: cls()


def _problems(seeds):
    return [Problem(id=f"c{s}", question=f"countdown {s}", answer="", seed=s) for s in seeds]


def _counting_sampler(tokenizer, mistakes=()):
    """Says the number the last message asks for (wrong on the turns listed in ``mistakes``)."""

    def respond(text, _):
        turn = text.count("<|im_start|>assistant") - 1
        asked = re.findall(r"(?:from|Now|say) (\d+)", text)[-1]
        return "7" if turn in mistakes else asked

    return ScriptedSampler(tokenizer, respond)


def _segments(t):
    """Maximal runs of (loss_mask, turn_id) after the prompt."""
    runs, start = [], t.prompt_len
    for i in range(t.prompt_len + 1, len(t.input_ids) + 1):
        if i == len(t.input_ids) or (t.loss_mask[i], t.turn_ids[i]) != (t.loss_mask[start], t.turn_ids[start]):
            runs.append((t.loss_mask[start], t.turn_ids[start], t.input_ids[start:i]))
            start = i
    return runs


# ---------------------------------------------------------------------------------------------------- contract
def test_reset_and_step_returns_are_checked_with_the_fix_in_the_message():
    assert checked_reset("hello", "E") == ("hello", {})
    assert checked_reset(("hello", {"a": 1}), "E") == ("hello", {"a": 1})
    with pytest.raises(EnvContractError, match=r"E\.reset must return the first observation as a str"):
        checked_reset(["hello"], "E")
    result = checked_step(("obs", 1, 0, 1, None), "E")
    assert (result.observation, result.reward, result.terminated, result.truncated, result.info) == (
        "obs",
        1.0,
        False,
        True,
        {},
    )
    with pytest.raises(EnvContractError, match=r"E\.step must return \(observation, reward, terminated"):
        checked_step(("obs", 1.0, False, {}), "E")
    with pytest.raises(EnvContractError, match="reward must be a number"):
        checked_step(("obs", "high", False, False, {}), "E")
    with pytest.raises(EnvContractError, match="reward must be finite"):
        checked_step(("obs", float("nan"), False, False, {}), "E")
    with pytest.raises(EnvContractError, match="observation must be a str"):
        checked_step((None, 0.0, False, False, {}), "E")


# --------------------------------------------------------------------------------- chat observations, rewards
def test_step_rewards_observations_and_chat_tokens_are_recorded_exactly(tiny_tokenizer):
    spec = EpisodeSpec(system_prompt=SYSTEM, max_turns=6, max_new_tokens_per_turn=16, max_total_tokens=400)
    result = rollout(
        _problems([0]), 2, _counting_sampler(tiny_tokenizer, mistakes={1}), tiny_tokenizer, each(Countdown), spec
    )
    for t in result.trajectories:
        # 3, (a mistake), 2, 1, 0: the mistake costs a turn, is flagged, and earns nothing.
        assert [turn.reward for turn in t.turns] == [0.25, 0.0, 0.25, 0.25, 1.0]
        assert [turn.invalid_call for turn in t.turns] == [False, True, False, False, False]
        assert [turn.observation for turn in t.turns] == ["Now 2.", "No: say 2.", "Now 1.", "Now 0.", "Done!"]
        assert t.correct and t.finish_reason == "terminated" and not t.uses_tools
        runs = _segments(t)
        model_runs = [r for r in runs if r[0] == 1]
        observations = [r for r in runs if r[0] == 0]
        assert [r[1] for r in model_runs] == list(range(5))
        for (_, _, ids), turn in zip(model_runs, t.turns, strict=True):
            assert ids[-1] == tiny_tokenizer.eos_token_id  # the model ended its message itself
            assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == turn.text
        # Between two messages: exactly the chat template's tokens, the end-of-message token not repeated.
        for (_, turn_id, ids), turn in zip(observations, t.turns, strict=False):
            expected = f"\n<|im_start|>user\n{turn.observation}<|im_end|>\n<|im_start|>assistant\n"
            assert turn_id == -1 and tiny_tokenizer.decode(ids) == expected
        assert t.input_ids[-1] == tiny_tokenizer.eos_token_id  # nothing after the last step's observation


def test_turn_cap_token_budget_and_truncation_end_episodes(tiny_tokenizer):
    class Tired(Countdown):
        def step(self, action):
            observation, reward, terminated, _, info = super().step(action)
            return observation, reward, terminated, self.next == 1, info

    capped = EpisodeSpec(system_prompt=SYSTEM, max_turns=2, max_new_tokens_per_turn=16, max_total_tokens=400)
    (t,) = rollout(
        _problems([0]), 1, _counting_sampler(tiny_tokenizer), tiny_tokenizer, each(Countdown), capped
    ).trajectories
    assert t.finish_reason == "max_turns" and t.num_turns == 2 and not t.correct and t.loss_mask[-1] == 1

    def play(env, budget):
        spec = EpisodeSpec(system_prompt=SYSTEM, max_turns=6, max_new_tokens_per_turn=16, max_total_tokens=budget)
        (t,) = rollout(
            _problems([0]), 1, _counting_sampler(tiny_tokenizer), tiny_tokenizer, each(env), spec
        ).trajectories
        return t

    t = play(Tired, 400)
    assert t.finish_reason == "truncated" and t.num_turns == 2 and not t.correct
    budget = len(prompt_ids(tiny_tokenizer, SYSTEM, "Count down from 3.")) + 6  # one turn, part of an observation
    t = play(Countdown, budget)
    assert t.finish_reason == "length" and len(t.input_ids) == budget and t.num_turns == 1


def test_success_without_the_key_is_a_terminating_positive_reward(tiny_tokenizer):
    class Plain(Countdown):
        def step(self, action):
            observation, reward, terminated, truncated, info = super().step(action)
            info.pop("success", None)
            return observation, reward, terminated, truncated, info

    def play(max_turns):
        spec = EpisodeSpec(system_prompt=SYSTEM, max_turns=max_turns, max_new_tokens_per_turn=16)
        (t,) = rollout(
            _problems([0]), 1, _counting_sampler(tiny_tokenizer), tiny_tokenizer, each(Plain), spec
        ).trajectories
        return t

    assert play(6).correct  # the last step terminated the episode with reward 1
    assert not play(2).correct  # 0.25 on a step that did not end the episode is not success


# ------------------------------------------------------------------------------------------------------ faults
class Faulty(Countdown):
    """Countdown whose seed-1 instance raises at its second step and seed-2 instance hangs at its first."""

    release = threading.Event()
    woke = threading.Event()

    def reset(self, seed=None):
        self.seed, self.steps = seed, 0
        return super().reset(0)

    def step(self, action):
        self.steps += 1
        if self.seed == 1 and self.steps == 2:
            raise KeyError("the board is gone")
        if self.seed == 2:
            self.release.wait(30)
            self.woke.set()
        return super().step(action)


@pytest.mark.parametrize("driver", ["turn-by-turn", "streaming"])
def test_a_step_that_raises_or_hangs_ends_only_its_own_trajectory(tiny_tokenizer, shipped_tiny, driver):
    if driver == "turn-by-turn":
        sampler, tokenizer = _counting_sampler(tiny_tokenizer), tiny_tokenizer
    else:
        from gtpo.generation.engine import EngineOptions, EngineSampler

        model, tokenizer = shipped_tiny
        sampler = EngineSampler(model, tokenizer, EngineOptions(slots=8, max_len=256, chunk=2))
    spec = EpisodeSpec(
        system_prompt=SYSTEM, max_turns=4, max_new_tokens_per_turn=8, max_total_tokens=256, step_timeout_s=1.0
    )
    Faulty.release.clear()
    Faulty.woke.clear()
    try:
        fine, raising, hanging = rollout(
            _problems([0, 1, 2]), 1, sampler, tokenizer, each(Faulty), spec, seed=0
        ).trajectories
        assert not Faulty.woke.is_set()  # the rollout returned while the hung step still hung
    finally:
        Faulty.release.set()
    assert raising.finish_reason == "env_error" and raising.num_turns == 2
    assert "KeyError" in raising.error and "the board is gone" in raising.error and not raising.correct
    assert hanging.finish_reason == "env_timeout" and hanging.num_turns == 1 and "time limit" in hanging.error
    assert fine.error is None and fine.finish_reason in {"terminated", "max_turns"}
    metrics = rollout_metrics([fine, raising, hanging])
    assert metrics["rollout/finish_env_error"] == metrics["rollout/finish_env_timeout"] == 1 / 3


def test_an_environment_that_cannot_be_made_or_reset_ends_its_trajectory_at_once(tiny_tokenizer):
    def make(problem):
        if problem.seed == 1:
            raise RuntimeError("no such board")
        return Countdown()

    spec = EpisodeSpec(system_prompt=SYSTEM, max_turns=6, max_new_tokens_per_turn=16, max_total_tokens=400)
    fine, broken = rollout(
        _problems([0, 1]), 1, _counting_sampler(tiny_tokenizer), tiny_tokenizer, make, spec
    ).trajectories
    assert fine.correct and broken.num_turns == 0 and broken.finish_reason == "env_error"
    assert "no such board" in broken.error and set(broken.loss_mask) == {0}


# ----------------------------------------------------------------------------------------------------- sources
def test_sources_are_told_apart_and_held_out_seeds_are_never_trained_on():
    assert is_env_source("gem:game:GuessTheNumber-v0-easy") and is_env_source("mygames:HotCold?high=10")
    for name in ("arith", "reasoning-gym:basic_arithmetic", "data/train.jsonl", "owner/dataset", "arith-heldout"):
        assert not is_env_source(name)
    assert without_own("m:C?problems=5&high=3&seed=7") == "m:C?high=3" and without_own("m:C?seed=1") == "m:C"


@pytest.fixture
def hotcold(tmp_path, monkeypatch):
    """docs/environments.md's example, written out as the module the docs tell users to save."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "environments.md").read_text()
    code = re.search(r"```python\n(# mygames\.py\n.*?)```", doc, re.DOTALL).group(1)
    (tmp_path / "mygames.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mygames:HotCold?high=10"


def test_a_user_class_loads_with_its_options_and_clear_errors(hotcold):
    train = env_problems(hotcold, "data.train", heldout=False, run_seed=2)
    held = env_problems(hotcold + "&problems=5", "data.eval", heldout=True)
    assert len(train) == 2000 and train[0].seed == 4000 and len(held) == 5 and held[0].seed == HELDOUT_SEED
    assert not {p.seed for p in train} & {p.seed for p in held}
    env = env_factory(hotcold, "data.train", sandbox=None, max_turns=4)(train[0])
    assert env.high == 10 and env.reset(seed=3) == env.reset(seed=3)
    for source, message in [
        ("nosuchmodule:Env", "cannot import module 'nosuchmodule'"),
        ("mygames:Missing", "has no class 'Missing'"),
        ("mygames:HotCold?colour=red", "does not take"),
        ("random:Random", "has no reset or step method"),
        ("mygames:HotCold?problems=x", "must be integers"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            env_problems(source, "data.train", heldout=False)


def test_two_steps_train_on_the_documented_example(hotcold, tmp_path):
    import json

    from gtpo.config import from_dict
    from gtpo.trainer import Trainer

    config = from_dict(
        {
            "data": {"train": hotcold, "eval_limit": 4},
            "rollout": {"group_size": 4, "problems_per_step": 2, "max_turns": 4, "max_new_tokens_per_turn": 24},
            "steps": 2,
            "eval_every": 2,
            "output_dir": str(tmp_path / "run"),
            "progress": False,
            "device": "cpu",
            "export": "none",
        }
    )
    trainer = Trainer(config)
    try:
        before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
        metrics = trainer.train()
    finally:
        trainer.close()
    assert trainer.sandbox is None  # no sandbox is started for an environment that needs none
    assert "loss/total" in metrics and "eval/avg@1" in metrics
    moved = [n for n, p in trainer.policy.named_parameters() if not np.allclose(p.detach(), before[n])]
    assert moved, "two updates on an environment's rewards moved no weight"
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    turns = [turn for record in samples for turn in record["turns"]]
    assert turns and all("env_reward" in turn and "observation" in turn for turn in turns)
    assert any(turn["observation"] for turn in turns)
    evaluations = [json.loads(line) for line in (tmp_path / "run" / "eval_problems.jsonl").read_text().splitlines()]
    assert {e["name"] for e in evaluations} == {hotcold}  # named as the environment, not the unused arith set


# ----------------------------------------------------------------------------------------------------------- GEM
GUESS = "gem:game:GuessTheNumber-v0-easy"


@pytest.fixture
def gem():
    return pytest.importorskip("gem", reason="GEM is installed by sh scripts/install-gem.sh")


def _guess_env(gem, seed):
    from gtpo.envs.gem import GemEnv

    env = GemEnv("game:GuessTheNumber-v0-easy", {})
    return env, env.reset(seed=seed)[0]


def test_gem_marks_invalid_moves_and_format_errors_and_success(gem):
    from gtpo.envs.gem import GemEnv

    env, first = _guess_env(gem, 3)
    assert "between 1 and 10" in first
    target = env.env.game_number
    low = 1 if target != 1 else 2
    observation, reward, terminated, _, info = env.step(f"\\boxed{{{low}}}")
    assert not info["invalid_action"] and reward == 0.0 and observation.endswith("Enter your next guess.")
    _, reward, terminated, _, info = env.step("\\boxed{99}")  # outside the range: GEM's invalid move
    assert info["invalid_action"] and reward == 0.0 and not terminated
    _, reward, terminated, _, info = env.step(f"\\boxed{{{low}}}")  # guessed before: invalid too
    assert info["invalid_action"] and not terminated
    _, reward, terminated, _, info = env.step(f"\\boxed{{{target}}}")
    assert terminated and reward == 1.0 and info["success"] and not info["invalid_action"]
    other = GemEnv("game:GuessTheNumber-v0-easy", {})
    other.reset(seed=3)
    _, reward, terminated, _, info = other.step("I have no idea")  # no number: GEM's format error
    assert info["invalid_action"] and reward == -0.1 and terminated and not info["success"]


def test_gem_games_replay_by_seed_whatever_else_draws_random_numbers(gem):
    from gtpo.envs.gem import GemEnv

    random.seed(123)
    np.random.seed(123)
    expected_py, expected_np = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)
    targets = {}

    def play(seed):
        env = GemEnv("game:Game2048-v0-easy", {})  # 2048 draws new tiles inside step
        env.reset(seed=seed)
        boards = [env.step("\\boxed{left}")[0] for _ in range(3)]
        targets.setdefault(seed, []).append(boards)

    threads = [threading.Thread(target=play, args=(seed,)) for seed in (1, 2, 1, 2, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len({str(b) for b in runs}) == 1 for runs in targets.values())  # a seed replays its game
    assert targets[1][0] != targets[2][0]
    assert (random.random(), np.random.random()) == (expected_py, expected_np)  # the process's draws untouched


def test_a_gem_step_waiting_for_another_reports_gems_rewards_and_leaves_gems_constants_alone(gem):
    """Steps run on many threads at once (a rollout's env calls do). Each step swaps GEM's invalid-move and
    format-error rewards for sentinels while it runs; a step that read GEM's values while another held the
    sentinels would report a sentinel and restore the sentinels for good (every later invalid move -987654).
    Here one step is held inside GEM's own step while a second one starts."""
    from gem.utils.constants import LanguageGameReward

    from gtpo.envs.gem import GemEnv

    before = (LanguageGameReward.invalid_action_reward, LanguageGameReward.format_error_reward)
    held, waiting = GemEnv("game:GuessTheNumber-v0-easy", {}), GemEnv("game:GuessTheNumber-v0-easy", {})
    held.reset(seed=1)
    waiting.reset(seed=2)
    inside, go = threading.Event(), threading.Event()
    gem_step = held.env.step

    def slow_step(action):
        inside.set()
        go.wait(10)
        return gem_step(action)

    held.env.step = slow_step
    rewards = {}
    first = threading.Thread(target=lambda: rewards.setdefault("held", held.step("\\boxed{99}")[1]))
    second = threading.Thread(target=lambda: rewards.setdefault("waiting", waiting.step("\\boxed{99}")[1]))
    first.start()
    assert inside.wait(10)
    second.start()
    time.sleep(0.3)  # the second step has started and waits for the first
    go.set()
    first.join()
    second.join()
    assert rewards == {"held": 0.0, "waiting": 0.0}  # both out of range: GEM's invalid move, reward 0
    assert (LanguageGameReward.invalid_action_reward, LanguageGameReward.format_error_reward) == before


def test_gem_source_problems_and_a_rollout_through_the_adapter(gem, tiny_tokenizer):
    train = env_problems(GUESS + "?problems=3", "data.train", heldout=False)
    assert [p.seed for p in train] == [0, 1, 2] and train[0].source == GUESS + "?problems=3"
    with pytest.raises(ConfigError, match="GEM refused it"):
        env_problems("gem:game:NoSuchGame-v0", "data.train", heldout=False)
    guesses = iter(range(1, 100))
    sampler = ScriptedSampler(tiny_tokenizer, lambda text, _: f"My guess: \\boxed{{{next(guesses) % 10 + 1}}}")
    spec = EpisodeSpec(system_prompt=SYSTEM, max_turns=4, max_new_tokens_per_turn=16, max_total_tokens=2000)
    make = env_factory(GUESS, "data.train", sandbox=None, max_turns=4)
    (t,) = rollout(train[:1], 1, sampler, tiny_tokenizer, make, spec).trajectories
    assert "Guess The Number" in tiny_tokenizer.decode(t.input_ids[: t.prompt_len])
    assert t.turns and all(turn.observation for turn in t.turns) and t.finish_reason in {"terminated", "max_turns"}


def test_the_run_sandbox_goes_to_sources_whose_episodes_run_code():
    """The trainer and the tiny-model build open the tool sandbox for these sources only: math data and code
    problems run code in it; a GEM game or a user's class does not."""
    from gtpo.envs.sources import needs_sandbox

    assert needs_sandbox("arith") and needs_sandbox("data/my.jsonl")
    assert needs_sandbox("code:functions") and needs_sandbox("code:humaneval")
    assert not needs_sandbox("gem:game:GuessTheNumber-v0-easy") and not needs_sandbox("mypkg.envs:MyEnv")
