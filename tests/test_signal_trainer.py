"""The training-signal controls inside the trainer, on scripted rollouts (no sampling noise, no sandbox):
group filtering refills the batch, overlong trajectories are masked or penalized, and the importance weights
react to a sampler whose log-probs differ from the trainer's."""

from __future__ import annotations

import pytest
import torch
from conftest import ScriptedSampler
from transformers import AutoTokenizer

from gtpo.config import from_dict
from gtpo.data.problems import load_train_problems
from gtpo.trainer import Trainer

LONG = "let me think " * 40  # more tokens than a turn may have: the turn (and trajectory) is cut, "length"
UNCLOSED = "```python\nprint(1"  # an unparseable call: wrong, and format_penalty instead of no_call_penalty


class NoSandbox:
    """The scripts below never call the tool."""

    def open_session(self) -> str:
        raise AssertionError("no code should run")

    def run_batch(self, calls):
        raise AssertionError("no code should run")

    def close_session(self, session_id: str) -> None: ...

    def close(self) -> None: ...


class KindScript:
    """``respond`` for a ScriptedSampler: the n-th problem rolled out (in order) gets ``kinds[n]``; trajectory j
    of its group answers ``kind[j]``: "R" right, "W" wrong, "L" cut by the length cap, "U" wrong with an
    unparseable call. One turn per trajectory, called in trajectory order (the batch sampler's contract)."""

    def __init__(self, kinds, group_size, problems):
        self.kinds, self.group_size, self.calls, self.problems_seen = list(kinds), group_size, 0, []
        self.answers = {p.question: (p.id, p.answer) for p in problems}

    def __call__(self, context, _turn):
        question = max((q for q in self.answers if q in context), key=len)  # "1+2" is also in "11+2"
        problem_id, answer = self.answers[question]
        group, member = divmod(self.calls, self.group_size)
        self.calls += 1
        if member == 0:
            self.problems_seen.append(problem_id)
        kind = self.kinds[group][member]
        return {"R": f"\\boxed{{{answer}}}", "W": "\\boxed{-1}", "L": LONG, "U": UNCLOSED}[kind]


class RecordingUpdate:
    """Wraps the trainer's update (a public component) to keep what each step trained on."""

    def __init__(self, update):
        self.update, self.trained = update, []

    def __call__(self, batch, advantages, loss_mask):
        self.trained.append((batch, advantages, loss_mask))
        return self.update(batch, advantages, loss_mask)


def _trainer(model_dir, tmp_path, kinds, algo=None, **rollout):
    config = from_dict(
        {
            "model": {"name_or_path": model_dir},
            "data": {"eval": ""},
            "rollout": {
                "group_size": 2,
                "problems_per_step": 2,
                "max_turns": 1,
                "max_new_tokens_per_turn": 24,
                **rollout,
            },
            "algo": algo or {},
            "steps": 1,
            "eval_every": 0,
            "output_dir": str(tmp_path),
            "progress": False,
            "device": "cpu",
        }
    )
    script = KindScript(kinds, 2, load_train_problems(config.data, config.seed))
    sampler = ScriptedSampler(AutoTokenizer.from_pretrained(model_dir), script)
    trainer = Trainer(config, sampler=sampler, executor=NoSandbox())
    trainer.updater = RecordingUpdate(trainer.updater)
    trainer.script, trainer.trained = script, trainer.updater.trained
    return trainer


def _step(trainer):
    try:
        return trainer.train_step()
    finally:
        trainer.close()


def test_uniform_groups_are_dropped_and_refilled(model_dir, tmp_path):
    # problems in order: all right, mixed | all wrong | mixed -> two informative groups after three rounds
    trainer = _trainer(model_dir, tmp_path, ["RR", "RW", "WW", "WR"], filter_groups=True)
    metrics = _step(trainer)
    assert metrics["filter/groups_generated"] == 4 and metrics["filter/groups_dropped"] == 2
    assert metrics["filter/groups_informative"] == 2 and metrics["filter/rounds"] == 3
    assert trainer.stream.position == 4  # the refills took fresh problems from the stream
    ((batch, advantages, _),) = trainer.trained
    assert batch.input_ids.shape[0] == 4  # the two mixed groups only
    # each kept group: one right, one wrong -> advantages +1 and -1 on every model token (population std)
    per_row = [advantages[i][batch.loss_mask[i] > 0].unique().tolist() for i in range(4)]
    assert sorted(v for row in per_row for v in row) == pytest.approx([-1.0, -1.0, 1.0, 1.0], abs=1e-5)
    # trajectories and the generated-token count cover all eight rollouts, the training batch four
    assert metrics["rollout/tokens_per_informative_group"] > 0
    assert metrics["reward/accuracy"] == pytest.approx(4 / 8)


def test_filter_metric_accuracy_drops_a_group_that_differs_only_in_format(model_dir, tmp_path):
    # "WU": both wrong, but with format_penalty 0.2 their scores differ (-0.1 no call vs -0.2 invalid call)
    kinds, algo = ["WU", "RW", "WR"], {"format_penalty": 0.2}
    by_accuracy = _step(_trainer(model_dir, tmp_path / "acc", kinds, algo=algo, filter_groups=True))
    assert by_accuracy["filter/groups_dropped"] == 1 and by_accuracy["filter/groups_generated"] == 3
    by_score = _step(
        _trainer(model_dir, tmp_path / "score", kinds, algo=algo, filter_groups=True, filter_metric="score")
    )
    assert by_score["filter/groups_dropped"] == 0 and by_score["filter/groups_generated"] == 2


def test_refills_stop_at_the_cap(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path, ["RR", "RW", "WW", "WR"], filter_groups=True, filter_max_extra_problems=1)
    metrics = _step(trainer)
    assert metrics["filter/groups_generated"] == 3 and metrics["filter/rounds"] == 2
    ((batch, _, _),) = trainer.trained
    assert batch.input_ids.shape[0] == 2  # one informative group found within the cap: trained on it alone


def test_without_filter_uniform_groups_stay_in_the_batch(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path, ["RR", "RW"])
    metrics = _step(trainer)
    assert metrics["filter/groups_dropped"] == 0 and metrics["filter/groups_informative"] == 1
    ((batch, advantages, _),) = trainer.trained
    assert batch.input_ids.shape[0] == 4 and (advantages[:2] == 0).all()  # the all-right group: no signal


def test_a_step_with_no_informative_group_makes_no_update(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path, ["RR", "WW", "RR"], filter_groups=True, filter_max_extra_problems=1)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    metrics = _step(trainer)
    assert trainer.trained == [] and "loss/policy" not in metrics
    assert metrics["filter/groups_dropped"] == 3
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters(), strict=True))


def test_overlong_mask_removes_cut_trajectories_from_the_loss(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path, ["LR", "WL"], overlong="mask")
    metrics = _step(trainer)
    ((batch, _, loss_mask),) = trainer.trained
    cut = [0, 3]  # rows of the "L" trajectories
    assert metrics["rollout/finish_length"] == pytest.approx(2 / 4)
    for row in range(4):
        expected = torch.zeros_like(loss_mask[row]) if row in cut else batch.loss_mask[row].float()
        assert torch.equal(loss_mask[row], expected)


def test_overlong_penalty_lowers_the_reward_of_cut_trajectories(model_dir, tmp_path):
    kinds = ["LR", "WL"]
    plain = _step(_trainer(model_dir, tmp_path / "none", kinds))
    # a trajectory cut by a length cap counts as at the cap: the whole penalty, 0.5 here; 2 of 4 are cut
    penalized = _step(_trainer(model_dir, tmp_path / "pen", kinds, overlong="penalty", overlong_penalty=0.5))
    assert penalized["reward/mean"] == pytest.approx(plain["reward/mean"] - 2 * 0.5 / 4, abs=1e-6)


def test_importance_weights_follow_the_sampler_log_probs(model_dir, tmp_path):
    # The scripted sampler reports log-prob 0 (probability 1) for every token; the tiny random model gives
    # each token a probability far below 1, so every weight is pi_train / 1 < 1 and the gap is large.
    metrics = _step(_trainer(model_dir, tmp_path, ["RW", "WR"]))
    assert (
        metrics["loss/is_mismatch_mean"] > 1.0 and metrics["loss/is_mismatch_max"] >= metrics["loss/is_mismatch_mean"]
    )
    assert 0.0 < metrics["loss/is_weight_mean"] < 0.5
    unweighted = _step(_trainer(model_dir, tmp_path / "off", ["RW", "WR"], algo={"is_correction": "none"}))
    assert unweighted["loss/is_weight_mean"] == 1.0  # the gap is still measured and logged
    assert unweighted["loss/is_mismatch_mean"] == pytest.approx(metrics["loss/is_mismatch_mean"])


def test_filter_refills_with_the_configured_sampler_and_sandbox(model_dir, tmp_path):
    """The same loop on the run's own sampler and sandbox: a random model never answers right, so every group
    is uniform, refills run to the cap, and the step makes no update."""
    config = from_dict(
        {
            "model": {"name_or_path": model_dir},
            "data": {"eval": ""},
            "rollout": {
                "group_size": 2,
                "problems_per_step": 2,
                "max_turns": 2,
                "max_new_tokens_per_turn": 8,
                "max_total_tokens": 160,
                "sandbox_workers": 1,
                "filter_groups": True,
                "filter_max_extra_problems": 2,
                "overlong": "penalty",
            },
            "steps": 1,
            "eval_every": 0,
            "output_dir": str(tmp_path),
            "progress": False,
            "device": "cpu",
        }
    )
    trainer = Trainer(config)
    metrics = _step(trainer)
    assert metrics["reward/accuracy"] == 0.0
    assert metrics["filter/groups_generated"] == 4 and metrics["filter/groups_dropped"] == 4
    assert metrics["filter/rounds"] >= 2 and "loss/policy" not in metrics
    assert trainer.stream.position == 4
