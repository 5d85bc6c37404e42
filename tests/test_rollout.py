"""Rollout bookkeeping: masks, turn ids, alignment, episode rules; the real HF path and the real sandbox."""

import re

import pytest
import torch
from conftest import ScriptedSampler

from gtpo.envs.python_tool import python_tool_envs
from gtpo.generation.hf import HFSampler
from gtpo.model.policy import prompt_ids, token_logprobs
from gtpo.rollout.episode import rollout
from gtpo.rollout.metrics import is_void_trajectory, rollout_metrics
from gtpo.rollout.spec import EpisodeSpec
from gtpo.tools import format_tool_output
from gtpo.training.batch import collate
from gtpo.types import ExecResult, Problem

SYSTEM = "Use python."


class ScriptedExecutor:
    """Runs nothing: replies from a table keyed by code; records sessions."""

    def __init__(self, replies):
        self.replies, self.opened, self.closed = replies, [], []

    def open_session(self):
        self.opened.append(f"s{len(self.opened)}")
        return self.opened[-1]

    def run_batch(self, calls):
        return [ExecResult(*self.replies[code]) for _, code in calls]

    def close_session(self, session_id):
        self.closed.append(session_id)


SCRIPTS = {
    "two-turn": ["Compute.\n```python\nprint(6*7)\n```", "So \\boxed{42}."],
    "error-fix": ["```python\nprint(y)\n```", "Fix.\n```python\ny = 42\nprint(y)\n```", "\\boxed{42}"],
    "no-tool": ["I guess \\boxed{41}."],
    "unclosed": ["```python\nprint(1"],
    "loop": ["```python\nprint(6*7)\n```"],
    "void": ["I am thinking."],
}
REPLIES = {
    "print(6*7)": ("ok", "42"),
    "print(y)": ("error", "NameError: name 'y' is not defined"),
    "y = 42\nprint(y)": ("ok", "42"),
}


def _respond(context, turn):
    name = next(key for key in SCRIPTS if key in context)
    script = SCRIPTS[name]
    return script[min(turn, len(script) - 1)]


def _run(tokenizer, names, **kwargs):
    problems = [Problem(id=n, question=n, answer="42") for n in names]
    executor = ScriptedExecutor(REPLIES)
    result = rollout(
        problems,
        2,
        ScriptedSampler(tokenizer, _respond),
        tokenizer,
        python_tool_envs(executor, max_turns=kwargs.get("max_turns"), grade=lambda pred, ref: pred == ref),
        EpisodeSpec(system_prompt=SYSTEM, **kwargs),
    )
    return result.trajectories, executor


def _segments(t):
    """Maximal runs of (loss_mask, turn_id)."""
    runs, start = [], 0
    for i in range(1, len(t.input_ids) + 1):
        if i == len(t.input_ids) or (t.loss_mask[i], t.turn_ids[i]) != (t.loss_mask[start], t.turn_ids[start]):
            runs.append((t.loss_mask[start], t.turn_ids[start], t.input_ids[start:i]))
            start = i
    return runs


def test_multi_turn_bookkeeping_is_exact(tiny_tokenizer):
    trajectories, executor = _run(tiny_tokenizer, ["two-turn", "error-fix"])
    assert [t.group_id for t in trajectories] == [0, 0, 1, 1]
    for t in trajectories:
        assert len(t.input_ids) == len(t.loss_mask) == len(t.turn_ids) == len(t.sampler_logprobs)
        prompt = prompt_ids(tiny_tokenizer, SYSTEM, t.problem.question)
        assert t.input_ids[: t.prompt_len] == prompt
        assert set(t.loss_mask[: t.prompt_len]) == {0} and set(t.turn_ids[: t.prompt_len]) == {-1}
        runs = _segments(t)[1:]  # after the prompt: model turn, observation, model turn, ...
        model_runs = [r for r in runs if r[0] == 1]
        observation_runs = [r for r in runs if r[0] == 0]
        assert [r[1] for r in model_runs] == list(range(t.num_turns))
        for (_, _, ids), turn in zip(model_runs, t.turns, strict=True):
            assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == turn.text
        for (_, turn_id, ids), turn in zip(observation_runs, t.turns, strict=False):
            assert turn_id == -1
            assert ids == tiny_tokenizer.encode(format_tool_output(turn.tool_output), add_special_tokens=False)
        assert t.correct and t.finish_reason == "answer"
    fix = trajectories[2]
    assert [turn.exec_status for turn in fix.turns] == ["error", "ok", None]
    assert [turn.invalid_call for turn in fix.turns] == [True, False, False]
    assert fix.code == "print(y)\ny = 42\nprint(y)"
    assert sorted(executor.closed) == sorted(executor.opened) and len(executor.opened) == 4


def test_episode_rules(tiny_tokenizer):
    trajectories, _ = _run(tiny_tokenizer, ["no-tool", "unclosed", "loop", "void"], max_turns=3)
    no_tool, unclosed, loop, void = trajectories[0], trajectories[2], trajectories[4], trajectories[6]
    assert no_tool.finish_reason == "answer" and not no_tool.correct and not no_tool.turns[0].has_tool_call
    assert unclosed.turns[0].parse_error and unclosed.turns[0].invalid_call and unclosed.finish_reason == "eos"
    assert loop.finish_reason == "max_turns" and loop.num_turns == 3
    # No observation after the last allowed turn: the sequence ends with model tokens.
    assert loop.loss_mask[-1] == 1 and loop.turns[-1].tool_output == "42"
    assert void.finish_reason == "eos" and is_void_trajectory(void) and not is_void_trajectory(no_tool)


def test_length_cap_ends_episodes(tiny_tokenizer):
    trajectories, _ = _run(tiny_tokenizer, ["error-fix"], max_total_tokens=80)
    for t in trajectories:
        assert len(t.input_ids) <= 80 and t.finish_reason == "length"


def test_metrics(tiny_tokenizer):
    trajectories, _ = _run(tiny_tokenizer, ["two-turn", "no-tool"])
    m = rollout_metrics(trajectories)
    assert m["reward/accuracy"] == 0.5
    assert m["rollout/turns_mean"] == (2 + 2 + 1 + 1) / 4
    assert m["rollout/tool_call_rate"] == 2 / 6
    assert m["rollout/zero_variance_group_frac"] == 1.0
    assert m["rollout/finish_answer"] == 1.0


def test_collate_pads_with_untrained_tokens(tiny_tokenizer):
    trajectories, _ = _run(tiny_tokenizer, ["two-turn", "no-tool"])
    batch = collate(trajectories, tiny_tokenizer.pad_token_id)
    lengths = [len(t.input_ids) for t in trajectories]
    assert batch.input_ids.shape == (4, max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    pad = batch.attention_mask == 0
    assert (batch.loss_mask[pad] == 0).all() and (batch.turn_ids[pad] == -1).all()
    assert batch[1:3].input_ids.shape == (2, max(lengths))  # rows of every field at once


def test_hf_sampler_with_real_sandbox_runs_the_policys_code(shipped_tiny):
    """The shipped model writes code for arithmetic; the sandbox must run it and its output come back."""
    from gtpo.sandbox import SandboxLimits, SandboxPool
    from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems

    model, tokenizer = shipped_tiny
    with SandboxPool(SandboxLimits(wall_time_s=2.0), max_workers=2) as pool:
        result = rollout(
            heldout_problems()[:3],
            3,
            HFSampler(model, tokenizer),
            tokenizer,
            python_tool_envs(pool, max_turns=2),
            EpisodeSpec(
                system_prompt=SYSTEM_PROMPT,
                max_turns=2,
                max_new_tokens_per_turn=32,
                max_total_tokens=256,
                temperature=1.0,
            ),
            seed=0,
        )
    assert result.timings.generation_s > 0 and result.timings.env_s > 0
    ran = [turn for t in result.trajectories for turn in t.turns if turn.exec_status is not None]
    prints = [turn for turn in ran if re.fullmatch(r"print\([\d\s*%+]+\)", turn.code or "")]
    assert prints, "the policy printed no arithmetic: the sandbox's output was never checked"
    for turn in prints:  # `print(<arithmetic>)`: what Python prints for it is known here
        assert turn.exec_status == "ok" and turn.tool_output == f"{eval(turn.code[6:-1])}\n"
    assert all(turn.exec_status in ("ok", "error") for turn in ran)
    for t in result.trajectories:
        assert t.finish_reason in {"answer", "max_turns", "length", "eos"}
        ids = torch.tensor([t.input_ids])
        logp, _ = token_logprobs(model, ids, torch.ones_like(ids), temperature=1.0)
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        torch.testing.assert_close(logp[0][mask], torch.tensor(t.sampler_logprobs)[mask], atol=1e-4, rtol=0)


def test_scripted_executor_contract_matches_sandbox():
    from gtpo.sandbox import SandboxPool

    with SandboxPool(max_workers=1) as pool:
        session = pool.open_session()
        first, second = pool.run_batch([(session, "y = 6"), (session, "print(y * 7)")])
        pool.close_session(session)
    assert first.status == "ok" and second.output.strip() == "42"


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_batched_generation_equals_unbatched_greedy_and_logprobs(tiny_tokenizer, tiny_model, temperature):
    sampler = HFSampler(tiny_model, tiny_tokenizer)
    contexts = [[1, 5, 6], [7, 8, 9, 10, 11]]
    if temperature == 0.0:
        batched = sampler.generate(contexts, [12, 12], temperature=0.0)
        alone = sampler.generate(contexts[1:], [12], temperature=0.0)
        assert batched[1].token_ids == alone[0].token_ids
    sample = sampler.generate(contexts[1:], [12], temperature=temperature or 1.0, seed=3)[0]
    ids = torch.tensor([contexts[1] + sample.token_ids])
    logp, _ = token_logprobs(tiny_model, ids, torch.ones_like(ids), temperature=temperature or 1.0)
    torch.testing.assert_close(logp[0, 5:], torch.tensor(sample.logprobs), atol=1e-4, rtol=0)
