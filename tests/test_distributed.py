"""Two gloo processes take one step, under DDP and under FSDP2; the update equals one process's on the same data.

Trajectories are scripted per *global* trajectory index (so groups have reward variance, and each
trajectory is the same whichever rank generates it); the batch of 3 x 3 = 9 trajectories splits 5/4 over
two ranks, and every trajectory is longer than the token budget of a micro-batch, so each gets its own: the
ranks pack 5 and 4 micro-batches, and the uneven path (a zero-weight pass) runs too. The gradients are
compared through AdamW's first moment after one step (0.1 x the gradient); the parameters more loosely, since
Adam's first step divides each gradient element by its own magnitude, which magnifies float summation-order
noise on elements whose gradient is near zero.
The two ranks run a whole ``train()``, so they also write one run folder: rank 0's log, checkpoint, report and
exported model.
"""

import copy
import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ScriptedSampler
from transformers import AutoModelForCausalLM

from gtpo.config import from_dict
from gtpo.distributed import DistContext, init_distributed, shard_indices
from gtpo.rollout.episode import rollout
from gtpo.rollout.spec import EpisodeSpec
from gtpo.run.metrics import read_metrics
from gtpo.trainer import Trainer

GROUP = 3


def scripted_roll(trainer):
    """Trajectory j: right with tool use unless j % 3 == 1 (a wrong guess) or j % 3 == 2 (failed call first)."""
    spec = EpisodeSpec(
        system_prompt=trainer.system_prompt, max_turns=2, max_total_tokens=400, max_new_tokens_per_turn=64
    )

    def roll(share):
        trajectories = []
        for problem, group_id, j in zip(share.problems, share.group_ids, share.indices, strict=True):
            expression = problem.question.replace("What is ", "").rstrip("?")
            if problem.question.startswith("Let x"):
                expression = "0"
            scripts = {
                0: [f"```python\nprint({expression})\n```", f"\\boxed{{{problem.answer}}}"],
                1: ["\\boxed{1}"],
                2: ["```python\nprint(y)\n```", "\\boxed{2}"],
            }[j % 3]
            sampler = ScriptedSampler(trainer.tokenizer, lambda _ctx, turn, s=scripts: s[min(turn, len(s) - 1)])
            result = rollout([problem], 1, sampler, trainer.tokenizer, trainer.train_envs, spec, group_ids=[group_id])
            trajectories += result.trajectories
        return trajectories, result.timings.as_dict()

    return roll


def scripted_trainer(config, ctx):
    trainer = Trainer(config, ctx=ctx)
    trainer.roll = scripted_roll(trainer)
    return trainer


def _config(model_dir, out, strategy="ddp", budget=1):
    """``budget``: optim.micro_batch_tokens (0: measured, with an activation budget of 1 KiB, less than one token, so
    the measured budget is the smallest, 256 tokens, and several trajectories share a micro-batch)."""
    return from_dict(
        {
            "model": {"name_or_path": model_dir},
            "data": {"eval": ""},
            "rollout": {"group_size": GROUP, "problems_per_step": 3, "sandbox_workers": 1},
            "optim": {
                "micro_batch_tokens": budget,
                "activation_gb": 2**-20,
                "lr": 1e-2,
                "warmup_steps": 0,
            },
            "strategy": strategy,
            "steps": 1,
            "eval_every": 0,
            "save_every": 0,
            "output_dir": str(out),
            "progress": False,
            "device": "cpu",
        }
    )


def _one_step(config, ctx=None):
    trainer = scripted_trainer(config, ctx)
    try:
        metrics = trainer.train_step()
    finally:
        trainer.sandbox.close()
    return trainer, metrics


def _first_moments(trainer):
    """AdamW's exp_avg per parameter name, gathered to full tensors (FSDP2 shards them)."""
    moments = {}
    for name, param in trainer.policy.named_parameters():
        value = trainer.optimizer.state[param]["exp_avg"]
        moments[name] = (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
    return moments


def _join(rank, world, folder):
    """Join the test's two-rank gloo group through a rendezvous file in the test's own folder: no TCP port to
    pick, so no other process on a busy machine can take it between the pick and the ranks binding it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    rendezvous = f"file://{Path(folder) / 'rendezvous'}"
    torch.distributed.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    return init_distributed("gloo")  # the group above, as the trainer sees it


def _worker(rank, world, model_dir, out, strategy, budget):
    """One whole ``train()`` of one step on two ranks, into one run folder (rank 0 writes it)."""
    ctx = _join(rank, world, out)
    config = dataclasses.replace(_config(model_dir, out / "run", strategy, budget), export="merged")
    trainer = scripted_trainer(config, ctx)
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    state = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in trainer.policy.state_dict().items()
    }
    moments = _first_moments(trainer)
    if rank == 0:
        torch.save({"state": state, "moments": moments, "metrics": metrics}, out / "two_ranks.pt")
    torch.distributed.destroy_process_group()


def test_sharding_is_round_robin_and_complete():
    shards = [shard_indices(9, DistContext(rank=r, world_size=2)) for r in range(2)]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]


@pytest.mark.parametrize(("strategy", "budget"), [("ddp", 1), ("fsdp", 1), ("ddp", 0), ("fsdp", 0)])
def test_two_gloo_ranks_equal_one_process(tmp_path, tiny_tokenizer, tiny_model, strategy, budget):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    single, single_metrics = _one_step(_config(str(model_dir), tmp_path / "single", budget=budget))
    assert single_metrics["adv/abs_mean"] > 0 and 0 < single_metrics["reward/accuracy"] < 1
    if budget:
        assert single_metrics["perf/micro_batches"] == 9  # 9 trajectories, one per micro-batch
    else:  # measured (every rank measures its own model: a probe forward under DDP/FSDP2 on two ranks)
        assert single.updater.token_budget == 256 and single_metrics["perf/micro_batches"] < 9

    mp.spawn(_worker, args=(2, str(model_dir), tmp_path, strategy, budget), nprocs=2, join=True)
    two = torch.load(tmp_path / "two_ranks.pt", weights_only=False)
    if budget:
        assert two["metrics"]["perf/micro_batches"] == 5  # rank 0 packs 5 trajectories; rank 1 runs a filler pass
    for name, moment in _first_moments(single).items():
        torch.testing.assert_close(two["moments"][name], moment, atol=1e-9, rtol=1e-4, msg=name)
    for name, value in single.policy.state_dict().items():
        torch.testing.assert_close(two["state"][name], value, atol=2e-5, rtol=1e-5, msg=name)
    for key in ("reward/accuracy", "reward/mean", "adv/abs_mean"):
        assert two["metrics"][key] == single_metrics[key]
    changed = any(
        not torch.equal(value, tiny_model.state_dict()[name]) for name, value in single.policy.state_dict().items()
    )
    assert changed
    # the two ranks wrote one run folder: rank 0's log, checkpoint, report and the exported model
    run = tmp_path / "run"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]
    assert (run / "checkpoints" / "step_0000001" / "model.pt").exists() and (run / "summary.md").exists()
    exported = AutoModelForCausalLM.from_pretrained(run / "model").state_dict()
    assert all(torch.equal(exported[name], value) for name, value in two["state"].items() if name in exported)


def _bf16_worker(rank, world, out):
    ctx = _join(rank, world, out)
    from conftest import build_model, build_tokenizer

    from gtpo.distributed import wrap_model
    from gtpo.model.policy import packed_attention_active, packed_token_logprobs

    model = build_model(build_tokenizer())
    wrapped = wrap_model(model, ctx, "fsdp", bf16=True)
    seen = []
    model.model.layers[0].mlp.up_proj.register_forward_pre_hook(lambda m, _: seen.append(m.weight.dtype))
    ids, lengths, scored = _packed_example()
    with packed_attention_active(wrapped):
        logp, _ = packed_token_logprobs(wrapped, ids, lengths, scored)
        logp.sum().backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    if rank == 0:
        torch.save({"logp": logp.detach(), "grads": grads, "seen": seen}, out / "bf16.pt")
    torch.distributed.destroy_process_group()


def _packed_example():
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    return ids, [8, 12], torch.tensor([j for j in range(1, 20) if j != 8])


def test_fsdp_bf16_gathers_bf16_weights_and_keeps_float32_gradients(tmp_path, tiny_model):
    """Both ranks score the same tokens, so the reduced gradient equals one process's (within bf16 rounding)."""
    from gtpo.model.policy import packed_token_logprobs

    ids, lengths, scored = _packed_example()
    reference = copy.deepcopy(tiny_model)
    logp, _ = packed_token_logprobs(reference, ids, lengths, scored)
    logp.sum().backward()
    mp.spawn(_bf16_worker, args=(2, tmp_path), nprocs=2, join=True)
    two = torch.load(tmp_path / "bf16.pt", weights_only=False)
    assert two["seen"] == [torch.bfloat16]
    torch.testing.assert_close(two["logp"], logp.detach(), atol=0.05, rtol=0.02)
    for name, param in reference.named_parameters():
        grad = two["grads"][name]
        assert grad.dtype == torch.float32
        assert torch.linalg.vector_norm(grad - param.grad) <= 0.05 * torch.linalg.vector_norm(param.grad), name
