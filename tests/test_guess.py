"""GEM's GuessTheNumber and its shipped tiny model: the scripted players, their traces (real games, tokenized as
the rollout tokenizes an episode), the two presets, and where the shipped model starts on each."""

from __future__ import annotations

import math
import random
import re

import pytest

from gtpo.tiny import guess_traces
from gtpo.tiny.guess_traces import GAME, GAMES, SKILLS, SYSTEM_PROMPT, Skill, believe, make_traces, play

gem = pytest.importorskip("gem", reason="GEM is installed by sh scripts/install-gem.sh")

MESSAGE = re.compile(r"^(\d+) < x < (\d+)\. \\boxed\{(\d+)\}$")
PRESETS = {"guess": guess_traces.EASY, "guess-long": guess_traces.LONG}


@pytest.fixture(scope="module")
def traces():
    return make_traces(120, seed=3)


def _env(options):
    from gtpo.envs.gem import GemEnv

    return GemEnv(GAME, options)


def test_a_hint_moves_one_bound_to_the_guess():
    assert believe(0, 11, 5, True, top=10) == (5, 11)
    assert believe(0, 11, 5, False, top=10) == (0, 5)
    assert believe(37, 62, 49, True, top=100) == (49, 62)


def test_a_belief_left_empty_is_widened_to_the_edge_on_the_hints_side():
    assert believe(5, 8, 7, True, top=10) == (7, 11)  # "higher than 7" but it believed x < 8: up to 10 again
    assert believe(5, 8, 6, False, top=10) == (0, 6)
    assert believe(9, 11, 10, True, top=10) == (0, 11)  # nothing above 10: the whole game


def test_traces_are_real_games_that_replay_through_gem(traces):
    """Each trace's observations are what GemEnv answers to its messages, from its own reset seed."""
    for trace in traces[:40]:
        env = _env(trace.options)
        first, _ = env.reset(seed=trace.seed)
        assert first == trace.observation and "Guess The Number" in first
        for k, (text, shown) in enumerate(trace.turns):
            observation, _, terminated, truncated, info = env.step(text)
            ended = terminated or truncated
            assert ended is (k == len(trace.turns) - 1) and (None if ended else observation) == shown
        assert info["success"] is trace.success
    assert all(shown.endswith("\nEnter your next guess.") for t in traces for _, shown in t.turns[:-1])


def test_every_message_states_a_belief_and_guesses_inside_it(traces):
    for trace in traces:
        top = trace.options["max_number"]
        bounds = [tuple(map(int, MESSAGE.match(text).groups())) for text, _ in trace.turns]
        assert bounds[0][:2] == (0, top + 1)  # the range read off the instructions, as exclusive bounds
        assert all(0 <= low < guess < high <= top + 1 for low, high, guess in bounds)
        assert len(trace.turns) <= trace.options["max_turns"]


@pytest.mark.parametrize("top", sorted(GAMES))
def test_a_player_without_slips_always_wins_by_bisection(top):
    """The midpoint of the exclusive bounds, never a slip: every game of every trace range is won within
    ceil(log2(top + 1)) guesses, fewer than each range's smallest turn budget allows."""
    turns = min(GAMES[top])
    assert math.ceil(math.log2(top + 1)) <= turns
    env, rng = _env({"max_number": top, "max_turns": turns}), random.Random(top)
    for seed in range(30):
        trace = play(env, seed, {"max_number": top, "max_turns": turns}, rng, Skill(midpoint=1.0, stale=0.0, flip=0.0))
        assert trace.success and len(trace.turns) <= math.ceil(math.log2(top + 1)), trace.turns


def test_a_rejected_guess_is_followed_by_another_guess_in_the_same_belief():
    """Always stale at the midpoint: the second guess repeats the first, GEM rejects it (no hint), and the
    player then tries another point of the same belief instead of repeating it again."""
    options = {"max_number": 100, "max_turns": 6}
    env, rng = _env(options), random.Random(0)
    for seed in range(10):
        trace = play(env, seed, options, rng, Skill(midpoint=1.0, stale=1.0, flip=0.0))
        guesses = [int(MESSAGE.match(text).group(3)) for text, _ in trace.turns]
        if trace.success and len(guesses) == 1:
            continue
        assert guesses[1] == guesses[0] and "already guessed" in trace.turns[1][1]
        assert guesses[2] != guesses[1]


def test_slips_make_the_mix_play_worse_than_bisection():
    """The shipped mix loses games that bisection wins: the warm start has room to improve on every range."""
    traces = make_traces(200, seed=11)
    assert 0.2 < sum(t.success for t in traces) / len(traces) < 0.8
    assert set(SKILLS) == set(GAMES)
    stale = sum(
        MESSAGE.match(a).groups()[:2] == MESSAGE.match(b).groups()[:2]
        for t in traces
        for (a, _), (b, _) in zip(t.turns, t.turns[1:], strict=False)
    )
    assert stale > 0


def _tokenizers():
    from transformers import AutoTokenizer

    from gtpo.tiny import GUESS_MODEL_DIR

    return {"tiny-guess": AutoTokenizer.from_pretrained(GUESS_MODEL_DIR)}


@pytest.mark.parametrize("which", ["fixture", "tiny-guess"])
def test_the_builds_tokenization_is_the_rollouts(which, traces, tiny_tokenizer):
    """A trace replayed through the real rollout (its messages as the sampled turns, each ended by the
    end-of-message token; GEM answering through the adapter) gives exactly the build's ids and loss mask."""
    from conftest import ScriptedSampler

    from gtpo.envs.sources import env_factory, env_problems
    from gtpo.rollout.episode import rollout
    from gtpo.rollout.spec import EpisodeSpec
    from gtpo.tiny.build import tokenize_game_trace

    tokenizer = tiny_tokenizer if which == "fixture" else _tokenizers()["tiny-guess"]
    picked = {}
    for trace in traces:  # one game of each (range, budget, outcome)
        picked.setdefault((trace.options["max_number"], trace.options["max_turns"], trace.success), trace)
    assert len(picked) >= 8
    for trace in picked.values():
        top, turns = trace.options["max_number"], trace.options["max_turns"]
        source = f"gem:{GAME}?max_number={top}&max_turns={turns}&problems=1&seed={trace.seed}"
        (problem,) = env_problems(source, "data.train", heldout=False)
        said = [text for text, _ in trace.turns]
        sampler = ScriptedSampler(
            tokenizer, lambda context, _, said=said: said[context.count("<|im_start|>assistant") - 1]
        )
        spec = EpisodeSpec(SYSTEM_PROMPT, max_turns=turns, max_new_tokens_per_turn=32, max_total_tokens=4096)
        make_env = env_factory(source, "data.train", sandbox=None, max_turns=turns)
        (trajectory,) = rollout([problem], 1, sampler, tokenizer, make_env, spec).trajectories
        ids, mask = tokenize_game_trace(tokenizer, trace, SYSTEM_PROMPT)
        assert trajectory.input_ids == ids and trajectory.loss_mask == mask
        assert trajectory.correct is trace.success and len(trajectory.turns) == len(trace.turns)


def test_the_build_trains_on_messages_and_their_end_only(traces, tiny_tokenizer):
    from gtpo.tiny.build import tokenize_game_trace

    trace = max(traces, key=lambda t: len(t.turns))
    ids, mask = tokenize_game_trace(tiny_tokenizer, trace, SYSTEM_PROMPT)
    trained = tiny_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    end = tiny_tokenizer.eos_token
    assert trained == "".join(text + end for text, _ in trace.turns)
    assert "you guessed" not in trained and "assistant" not in trained


def test_the_shipped_tokenizer_splits_digits_and_knows_the_games_words():
    pieces = _tokenizers()["tiny-guess"].tokenize("37 < x < 62. \\boxed{49}\nAt turn 3, you guessed 49, and the")
    assert all(len(p.strip("Ġ")) <= 1 for p in pieces if any(c.isdigit() for c in p))
    assert "Ġguessed" in pieces


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_preset_plays_its_game_with_the_shipped_model_and_fits_its_budget(preset):
    """The preset trains on its GEM game and holds out GEM's held-out seeds; the turn cap is the game's own;
    the longest possible episode (every turn at the token cap, GEM's longest observation) fits the budget."""
    from gtpo.config import load_preset, validate
    from gtpo.envs.gem import parse
    from gtpo.envs.options import HELDOUT_PROBLEMS, HELDOUT_SEED
    from gtpo.envs.sources import eval_problems, system_prompt
    from gtpo.model.policy import prompt_ids
    from gtpo.model.source import model_path
    from gtpo.rollout.observation import ObservationTokens

    config = validate(load_preset(preset))
    assert config.data.train == PRESETS[preset] and model_path(config.model.name_or_path).endswith("tiny-guess")
    held = eval_problems(config.data)
    assert len(held) == HELDOUT_PROBLEMS and held[0].seed == HELDOUT_SEED
    _, _, options = parse(config.data.train, "data.train")
    env = _env(options)
    first, _ = env.reset(seed=held[0].seed)
    top, budget = env.env.max_number, env.env.max_turns
    assert config.rollout.max_turns == budget and system_prompt(config.data) == SYSTEM_PROMPT
    tokenizer = _tokenizers()["tiny-guess"]
    longest = f"At turn {budget}, you guessed {top}, which has been already guessed before.\nEnter your next guess."
    observation = len(ObservationTokens(tokenizer, "user")(longest, tokenizer.eos_token_id))
    prompt = len(prompt_ids(tokenizer, SYSTEM_PROMPT, first.replace("33", "100")))
    worst = prompt + budget * config.rollout.max_new_tokens_per_turn + (budget - 1) * observation
    assert worst <= config.rollout.max_total_tokens, worst
    longest_message = len(tokenizer.encode(f"{top} < x < {top + 1}. \\boxed{{{top}}}")) + 1
    assert longest_message <= config.rollout.max_new_tokens_per_turn


def test_the_long_game_has_room_for_delayed_consequences():
    """At least 6 decisions, and more turns than bisection needs: an early wasted guess is paid for later."""
    from gtpo.envs.gem import parse

    _, _, options = parse(guess_traces.LONG, "data.train")
    env = _env(options)
    env.reset(seed=0)
    top, budget = env.env.max_number, env.env.max_turns
    assert budget >= 6 and math.ceil(math.log2(top + 1)) < budget


@pytest.mark.slow  # 200 held-out games a preset: 15-30 s each
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_shipped_model_starts_between_a_fifth_and_two_fifths_right(preset):
    """The warm start leaves room both ways on both presets: every held-out game, at the training temperature,
    played as a run's step-0 evaluation plays it (the preset's caps, sampler and seed)."""
    from gtpo.config import load_preset
    from gtpo.model.policy import load_policy
    from gtpo.model.source import model_path
    from gtpo.tiny.build import measure_preset

    model, tokenizer = load_policy(model_path(load_preset(preset).model.name_or_path))
    measured = measure_preset(model, tokenizer, preset)
    assert measured["games"] == 200
    assert 0.20 <= measured["heldout_accuracy"] <= 0.40, measured
