"""End-to-end through the Trainer's public API (train_step, train, save, resume) on a policy that learns.

The policy is the shipped tiny model on the embedded arithmetic task: it calls the tool, answers, and is right
about a third of the time, so groups have mixed outcomes, advantages are non-zero and updates move weights.
Every test checks an effect (parameters that move or stay, files that load, numbers that match), never a config
value read back. Where a test needs exact control of what the policy says (void turns, no answers), or only
needs real updates to have something to save and export, a scripted sampler replaces the model's sampling
(``_half_right``: half of each group right); the loss and the update still run through the tiny model.
"""

import json
import os
import re
import signal

import pytest
import torch
from conftest import ScriptedSampler
from transformers import AutoModelForCausalLM, AutoTokenizer

from gtpo.config import ConfigError, from_dict
from gtpo.eval.cli import EvalConfig, load_model
from gtpo.model.policy import load_policy
from gtpo.run.export import save_model_folder
from gtpo.run.metrics import EVAL_FILE, read_metrics
from gtpo.run.stop import TrainingStopped
from gtpo.tiny import DEFAULT_MODEL_DIR
from gtpo.trainer import Trainer

SEED = 0
ROLLOUT = {
    "group_size": 4,
    "problems_per_step": 2,
    "max_turns": 2,
    "max_new_tokens_per_turn": 32,
    "max_total_tokens": 256,
    "sandbox_workers": 2,
}


def _config(out, **overrides):
    base = {
        "model": {"name_or_path": "tiny"},
        "data": {"eval_limit": 4},
        "rollout": dict(ROLLOUT),
        "steps": 2,
        "eval_every": 0,
        "save_every": 1,
        "output_dir": str(out),
        "progress": False,
        "device": "cpu",
        "seed": SEED,
        "export": "none",
    }
    for key, value in overrides.items():
        base.setdefault(key, {}).update(value) if isinstance(value, dict) else base.__setitem__(key, value)
    return from_dict(base)


def _train(config, **kwargs):
    trainer = Trainer(config, **kwargs)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer


def _params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _without_timings(record):
    return {k: v for k, v in record.items() if not k.startswith("perf/")}


def _half_right(tokenizer):
    """Every other sample answers right (the answer worked out from the question here), the rest wrong: each
    group of four has two of each, so the update has a real gradient without the model's own sampling."""
    count = {"n": 0}

    def respond(context: str, turn: int) -> str:
        question = re.search(r"(What is .*?\?|Let x = .*?\?)<\|im_end\|>", context).group(1)
        if question.startswith("Let x = "):
            product, rest = question[len("Let x = ") :].split(". What is x")
            expression = f"({product}){rest.rstrip('?')}"
        else:
            expression = question.removeprefix("What is ").rstrip("?")
        count["n"] += 1
        return f"\\boxed{{{eval(expression)}}}" if count["n"] % 2 else "\\boxed{-7}"

    return ScriptedSampler(tokenizer, respond)


@pytest.mark.parametrize("algo", ["gtpo", "grpo"])
def test_an_update_on_mixed_rewards_moves_every_weight(tmp_path, algo):
    trainer = Trainer(_config(tmp_path, algo={"algo": algo}))
    try:
        before = _params(trainer.policy)
        metrics = trainer.train_step()
    finally:
        trainer.close()
    assert 0 < metrics["reward/accuracy"] < 1  # mixed outcomes: the precondition of any learning signal
    assert metrics["adv/abs_mean"] > 0 and metrics["optim/grad_norm"] > 0
    # the run's sampler (the engine) gives the trainer's log-probs up to float noise: importance weights of 1
    assert metrics["loss/is_mismatch_max"] < 1e-4 and metrics["loss/is_weight_mean"] == pytest.approx(1.0)
    unchanged = [n for n, p in trainer.policy.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_a_run_evaluates_reports_and_leaves_a_model_that_from_pretrained_loads(tmp_path, shipped_tiny):
    trainer = _train(_config(tmp_path, eval_every=2, export="merged"), sampler=_half_right(shipped_tiny[1]))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    for record in (records[0], records[2]):
        assert record["eval/ci95_low"] <= record["eval/avg@1"] <= record["eval/ci95_high"]
    assert json.loads((tmp_path / "config.json").read_text())["resume"] is False

    summary = (tmp_path / "summary.md").read_text()
    start, end = records[0]["eval/avg@1"], records[2]["eval/avg@1"]
    assert f"| held-out accuracy (avg@1) | {start:.3f} [" in summary and f"| {end - start:+.3f} |" in summary
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {(s["step"], s["kind"]) for s in samples} == {(0, "heldout"), (2, "heldout"), (2, "train")}
    group = [s for s in samples if s["kind"] == "train"]
    assert len(group) == ROLLOUT["group_size"] and len({s["problem_id"] for s in group}) == 1
    advantages = [turn["advantage"] for s in group for turn in s["turns"]]
    assert sum(advantages) == pytest.approx(0.0, abs=1e-4)  # GTPO centers the pooled turn returns of a group
    assert all("reward" in turn and "tool_output" in turn for s in group for turn in s["turns"])

    # The final policy is a plain HF folder: same logits, same tokenizer and chat template.
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2 * 3?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == trainer.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(prompt + "```python\nprint(6)\n```")])
    torch.testing.assert_close(_logits(exported, ids), _logits(trainer.policy, ids), rtol=0, atol=0)
    shipped, _ = load_policy(str(DEFAULT_MODEL_DIR))
    assert not torch.equal(_logits(shipped, ids), _logits(exported, ids))  # it is the trained policy

    # gtpo eval takes the run directory (its newest checkpoint) or one checkpoint, with the saved weights
    checkpoints = tmp_path / "checkpoints"
    for given, expected in ((tmp_path, "step_0000002"), (checkpoints / "step_0000001", "step_0000001")):
        model, _, name = load_model(EvalConfig(checkpoint=str(given)), torch.device("cpu"))
        saved = torch.load(checkpoints / expected / "model.pt", weights_only=True)
        assert name.endswith("@" + expected)
        assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_lora_policy_exports_merged_or_as_adapter_with_the_same_logits(tmp_path, shipped_tiny):
    pytest.importorskip("peft")  # an optional extra: gtpo[lora]
    from peft import PeftModel

    trainer = Trainer(_config(tmp_path / "run", model={"lora_rank": 4}), sampler=_half_right(shipped_tiny[1]))
    try:
        trainer.train_step()  # LoRA's B starts at zero: after a real update the adapter changes the logits
        merged = save_model_folder(trainer.model, trainer.tokenizer, tmp_path / "merged", lora="merged")
        adapter = save_model_folder(trainer.model, trainer.tokenizer, tmp_path / "adapter", lora="adapter")
    finally:
        trainer.close()
    ids = torch.tensor([trainer.tokenizer.encode("What is 12 * 34?```python\nprint(12 * 34)\n```")])
    expected = _logits(trainer.policy, ids)
    base = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR).eval()
    assert not torch.allclose(_logits(base, ids), expected)
    assert not (merged / "adapter_config.json").exists()
    # merged: W + scale * B @ A in float32 rounds differently from x @ W + scale * (x @ A) @ B, ~2e-5 here
    merged_logits = _logits(AutoModelForCausalLM.from_pretrained(merged).eval(), ids)
    torch.testing.assert_close(merged_logits, expected, rtol=1e-4, atol=1e-4)
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    torch.testing.assert_close(_logits(with_adapter, ids), expected)


def test_resume_after_real_updates_equals_the_uninterrupted_run_bit_for_bit(tmp_path, capsys):
    full = _train(_config(tmp_path / "full", steps=2))
    _train(_config(tmp_path / "cut", steps=1))  # "killed" after step 1 (its checkpoint)
    resumed = _train(_config(tmp_path / "cut", steps=2, resume=True))
    assert "resuming" in capsys.readouterr().out
    initial = _params(load_policy(str(DEFAULT_MODEL_DIR))[0])
    moved = 0
    for (name, a), b in zip(full.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b), name
        moved += not torch.equal(a, initial[name])
    assert moved == len(initial)
    full_records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    cut_records = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in cut_records] == [1, 2]
    assert all(r["adv/abs_mean"] > 0 for r in full_records)  # every step had a learning signal
    assert [_without_timings(r) for r in full_records] == [_without_timings(r) for r in cut_records]


def test_an_evaluation_abandoned_by_a_stop_is_done_on_resume(tmp_path, monkeypatch):
    """SIGTERM during step 1's held-out evaluation: the checkpoint is written without it and the resumed run
    evaluates step 1 before training on, so its held-out records equal an uninterrupted run's (a comparison
    once lost an evaluation point this way)."""
    config = {"steps": 2, "eval_every": 1, "rollout": {"eval_samples": 1}}
    full = _train(_config(tmp_path / "full", **config))
    cut = Trainer(_config(tmp_path / "cut", **config))
    evaluate = cut.evaluate

    def stopped_at_step_1(progress=None):
        if cut.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # lands before the first chunk reports progress
        return evaluate(progress)

    monkeypatch.setattr(cut, "evaluate", stopped_at_step_1)
    with pytest.raises(TrainingStopped):
        try:
            cut.train()
        finally:
            cut.close()
    assert [r["step"] for r in _eval_records(tmp_path / "cut")] == [0]
    resumed = _train(_config(tmp_path / "cut", **config, resume=True))

    full_evals, cut_evals = _eval_records(tmp_path / "full"), _eval_records(tmp_path / "cut")
    assert [r["step"] for r in cut_evals] == [0, 1, 2]
    assert [r["correct"] for r in cut_evals] == [r["correct"] for r in full_evals]
    for (name, a), b in zip(full.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b), name  # the evaluation on resume left training's course alone


def _eval_records(run_dir):
    return [json.loads(line) for line in (run_dir / EVAL_FILE).read_text().splitlines()]


def _void_or_not(tokenizer):
    """Step 1 of a two-group batch: group 1 answers (wrongly) on every sample, so its advantages are 0;
    group 2 is all void trajectories (no code and no answer in some turn) with unequal turn rewards."""
    position = {"turn0": 0}

    def respond(context: str, turn: int) -> str:
        if turn > 0:
            return "let me think"  # after a tool call: a void turn
        index = position["turn0"]
        position["turn0"] += 1
        if index < ROLLOUT["group_size"]:
            return "\\boxed{-7}"  # every arith answer is positive: wrong, same reward in the whole group
        return "let me think" if index % 2 == 0 else "```python\nprint(6 * 7)\n```"

    return ScriptedSampler(tokenizer, respond)


@pytest.mark.parametrize("filter_void", [True, False])
def test_void_trajectories_leave_the_loss_when_filtered(tmp_path, shipped_tiny, filter_void):
    _, tokenizer = shipped_tiny
    config = _config(tmp_path, rollout={"filter_void": filter_void})
    trainer = Trainer(config, sampler=_void_or_not(tokenizer))
    try:
        before = _params(trainer.policy)
        metrics = trainer.train_step()
    finally:
        trainer.close()
    assert metrics["rollout/void_rate"] == 0.5 and metrics["adv/abs_mean"] > 0
    moved = any(not torch.equal(p, before[n]) for n, p in trainer.policy.named_parameters())
    assert moved is not filter_void  # filtered: only the zero-advantage group is left, so no weight moves


def test_kl_penalty_measures_the_distance_from_the_frozen_reference(tmp_path, shipped_tiny):
    _, tokenizer = shipped_tiny
    config = _config(tmp_path, algo={"kl_coef": 0.1}, optim={"lr": 1e-3})
    trainer = Trainer(config, sampler=_half_right(tokenizer))
    try:
        first, second = trainer.train_step(), trainer.train_step()
    finally:
        trainer.close()
    assert first["reward/accuracy"] == 0.5 and first["adv/abs_mean"] > 0
    assert first["loss/kl_ref"] == pytest.approx(0.0, abs=1e-7)  # the policy still is the reference
    assert second["loss/kl_ref"] > 1e-6  # one update later it has moved away; the reference has not


def test_a_run_without_learning_signal_warns_once(tmp_path, shipped_tiny, capsys):
    _, tokenizer = shipped_tiny
    _train(_config(tmp_path, steps=3), sampler=ScriptedSampler(tokenizer, lambda context, turn: "let me think"))
    err = capsys.readouterr().err
    assert err.count("warning: no trajectory gave a final \\boxed{} answer in steps 1-3") == 1
    assert err.count("warning: 100% of trajectories in steps 1-3 had a void turn") == 1
    assert "no trajectory gave a final" in (tmp_path / "summary.md").read_text()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        Trainer(_config(tmp_path, resume=True))


def test_fresh_run_into_an_earlier_run_is_refused_unless_overwrite(tmp_path, shipped_tiny):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    (tmp_path / "summary.md").write_text("an earlier run's summary")
    with pytest.raises(ConfigError, match="--overwrite"):
        Trainer(_config(tmp_path))
    _train(_config(tmp_path, steps=1, overwrite=True), sampler=_half_right(shipped_tiny[1]))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
    assert "an earlier run" not in (tmp_path / "summary.md").read_text()


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys, shipped_tiny):
    _train(_config(tmp_path, steps=1), sampler=_half_right(shipped_tiny[1]))
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    trainer = _train(_config(tmp_path, steps=1, resume=True))
    assert trainer.finished and "already finished" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_the_exported_folder_prompts_as_training_did(tmp_path):
    """A plain-transformers user who sends only a user message gets the system prompt the policy trained with."""
    from gtpo import components
    from gtpo.config import DataConfig, ModelConfig
    from gtpo.run.export import PROMPT_FILE
    from gtpo.tasks import system_prompt_for

    model, tokenizer = components.build_policy(ModelConfig(), torch.device("cpu"))
    system = system_prompt_for(DataConfig()) + ' with "quotes", a \\ and ü'
    before = tokenizer.chat_template
    out = save_model_folder(model, tokenizer, tmp_path / "model", system_prompt=system)
    assert tokenizer.chat_template == before  # the live tokenizer is unchanged
    loaded = AutoTokenizer.from_pretrained(out)
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    trained = [{"role": "system", "content": system}, *user]
    render = {"add_generation_prompt": True, "tokenize": False}
    assert loaded.apply_chat_template(user, **render) == tokenizer.apply_chat_template(trained, **render)
    own = [{"role": "system", "content": "Be brief."}, *user]
    assert loaded.apply_chat_template(own, **render) == tokenizer.apply_chat_template(own, **render)
    assert json.loads((out / PROMPT_FILE).read_text())["system_prompt"] == system


def _collect(correct_by_round: list[list[list[bool]]], problems_per_step: int, max_extra: int):
    """``collect_groups`` with scripted correctness (round -> group -> trajectory) and a batch-centred score:
    each row's advantage is its correctness minus the mean over the rows scored together (so credit depends on
    which rows were scored together, as batch normalization does)."""
    from gtpo.distributed import DistContext
    from gtpo.method.credit import Credit
    from gtpo.rollout.groups import collect_groups
    from gtpo.types import Problem, Trajectory

    group_size = len(correct_by_round[0][0])
    taken: list[Problem] = []

    def take(n: int) -> list[Problem]:
        batch = [Problem(id=f"p{len(taken) + i}", question="q", answer="1") for i in range(n)]
        taken.extend(batch)
        return batch

    rounds = iter(range(len(correct_by_round)))

    def roll(share):
        round_index = next(rounds)
        rows = [correct_by_round[round_index][j // group_size][j % group_size] for j in share.indices]
        trajectories = [
            Trajectory(problem=p, group_id=g, correct=c)
            for p, g, c in zip(share.problems, share.group_ids, rows, strict=True)
        ]
        return trajectories, {}

    def score(trajectories, lengths):
        values = torch.tensor([float(t.correct) for t in trajectories])
        advantages = (values - values.mean())[:, None]
        return Credit(advantages, values, values.tolist(), {})

    out = collect_groups(
        take, roll, DistContext(), problems_per_step=problems_per_step, group_size=group_size,
        max_total_tokens=64, filter_groups=True, max_extra_problems=max_extra,
    )  # fmt: skip
    assert next(rounds, None) is None  # every scripted round was rolled out
    credit = score(out.kept, out.kept_lengths)  # as the trainer does: once, on the kept rows
    return out, credit


def test_a_group_dropped_without_refill_leaves_the_kept_rows_credited_among_themselves():
    # group 0 all right (no signal: dropped), group 1 one right one wrong; no extra problems allowed.
    out, credit = _collect([[[True, True], [True, False]]], problems_per_step=2, max_extra=0)
    assert [t.problem.id for t in out.kept] == ["p1", "p1"]
    # scored among the kept rows only: correctness 1, 0 around their mean 0.5 (with the dropped group's rows
    # in the batch the mean would be 0.75: 0.25, -0.75)
    assert credit.turn_advantages[out.local_positions, 0].tolist() == [0.5, -0.5]


def test_a_refilled_group_never_shares_an_id_with_a_group_kept_before():
    # round 0: group 0 differs (kept), group 1 all wrong (dropped); round 1 refills one group that differs.
    out, _ = _collect([[[True, False], [False, False]], [[False, True]]], problems_per_step=2, max_extra=4)
    ids = {}
    for t in out.kept:
        ids.setdefault(t.group_id, set()).add(t.problem.id)
    assert sorted(map(sorted, ids.values())) == [["p0"], ["p2"]]  # two groups, one problem each


def test_a_bf16_engine_is_announced_and_its_gap_with_the_trainer_is_measured(tmp_path, capsys):
    """Sampling in bfloat16 beside float32 weights: the run says so, and the logged sampler/trainer gap is that of
    bf16 rounding (a float32 engine's is float32 noise), so the importance weights have something to weigh."""
    _train(_config(tmp_path / "bf16", steps=1, generation={"engine_dtype": "bfloat16"}))
    out = capsys.readouterr().out
    assert "the engine samples in bfloat16, the trainer's weights are float32" in out
    _train(_config(tmp_path / "fp32", steps=1))
    assert "the engine samples in" not in capsys.readouterr().out
    gap = {
        name: read_metrics(tmp_path / name / "metrics.jsonl")[-1]["loss/is_mismatch_mean"] for name in ("bf16", "fp32")
    }
    assert gap["fp32"] < 1e-4 and gap["bf16"] > 1e-3, gap
