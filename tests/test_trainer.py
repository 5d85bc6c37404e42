"""End-to-end: a few training steps on a tiny random model with the real sandbox; resume equals uninterrupted."""

import dataclasses
import json

import pytest
import torch

from gtpo.config import ConfigError, from_dict
from gtpo.eval_cli import EvalConfig, load_model
from gtpo.metrics import read_metrics
from gtpo.trainer import Trainer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_model):
    path = tmp_path_factory.mktemp("model")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def _config(model_dir, out, **overrides):
    base = {
        "model": {"name_or_path": model_dir},
        "data": {"eval_limit": 4},
        "rollout": {
            "group_size": 2,
            "problems_per_step": 2,
            "max_turns": 2,
            "max_new_tokens_per_turn": 12,
            "max_total_tokens": 160,
            "sandbox_workers": 2,
        },
        "optim": {"micro_batch_size": 3, "lr": 1e-3},
        "steps": 2,
        "eval_every": 2,
        "save_every": 1,
        "output_dir": str(out),
        "progress": False,
        "device": "cpu",
    }
    for key, value in overrides.items():
        base.setdefault(key, {}).update(value) if isinstance(value, dict) else base.__setitem__(key, value)
    return from_dict(base)


def _train(config):
    trainer = Trainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer


@pytest.mark.parametrize("algo", ["gtpo", "grpo"])
def test_smoke_run_logs_evaluates_and_checkpoints(model_dir, tmp_path, algo):
    trainer = _train(_config(model_dir, tmp_path, algo={"algo": algo}))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert "eval/avg@1" in records[0] and "eval/avg@1" in records[-1]
    for key in ("reward/accuracy", "loss/policy", "loss/clipfrac", "rollout/turns_mean", "perf/step_s"):
        assert key in records[1]
    assert records[1]["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # first epoch: on-policy
    # the HF sampler's log-probs are the trainer's (float noise): importance weights of 1
    assert records[1]["loss/is_mismatch_max"] < 1e-4 and records[1]["loss/is_weight_mean"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "config.json").read_text())["algo"]["algo"] == algo
    assert (tmp_path / "checkpoints" / "step_0000002" / "model.pt").exists()
    assert trainer.step == 2
    # gtpo eval takes the run directory (its newest checkpoint) or one checkpoint, with the saved weights
    checkpoints = tmp_path / "checkpoints"
    for given, expected in ((tmp_path, "step_0000002"), (checkpoints / "step_0000001", "step_0000001")):
        model, _, name = load_model(EvalConfig(checkpoint=str(given)), torch.device("cpu"))
        saved = torch.load(checkpoints / expected / "model.pt", weights_only=True)
        assert name.endswith("@" + expected)
        assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_resume_after_interruption_matches_uninterrupted(model_dir, tmp_path):
    full = _train(_config(model_dir, tmp_path / "full", steps=3, eval_every=0))
    _train(_config(model_dir, tmp_path / "cut", steps=1, eval_every=0))  # "killed" after step 1
    resumed = _train(_config(model_dir, tmp_path / "cut", steps=3, eval_every=0, resume=True))
    for (name, a), b in zip(full.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == [1, 2, 3]
    full_records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    cut_records = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["reward/mean"] for r in full_records] == [r["reward/mean"] for r in cut_records]


def test_resume_without_checkpoint_is_a_clear_error(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        Trainer(_config(model_dir, tmp_path, resume=True))


def test_fresh_run_into_an_earlier_run_is_refused_unless_overwrite(model_dir, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ConfigError, match="--overwrite"):
        Trainer(_config(model_dir, tmp_path))
    _train(_config(model_dir, tmp_path, steps=1, eval_every=0, overwrite=True))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


def test_filter_void_and_kl_paths_run(model_dir, tmp_path):
    config = _config(model_dir, tmp_path, steps=1, eval_every=0, rollout={"filter_void": True}, algo={"kl_coef": 0.1})
    trainer = Trainer(config)
    try:
        metrics = trainer.train_step()
    finally:
        trainer.close()
    assert "loss/kl_ref" in metrics and metrics["loss/kl_ref"] == pytest.approx(0.0, abs=1e-6)
    assert dataclasses.asdict(config)["rollout"]["filter_void"] is True
