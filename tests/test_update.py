"""The packed update equals the padded computation it replaces: same loss, same gradients, for every loss_agg.

Reference: the whole batch right-padded in one forward (``token_logprobs``, full logits), old log-probs from a
separate no-grad pass, ``clipped_policy_loss`` with the batch's normalizer, one backward. Packed: ``PolicyUpdate``
with a small token budget (several micro-batches, trajectories packed back to back, old log-probs skipped at one
epoch), stepping plain SGD at lr 1 with no clipping, so that the parameter change is minus the gradient.
"""

import contextlib
import copy
import dataclasses

import pytest
import torch

from gtpo.components import enable_checkpointing
from gtpo.config import TrainConfig, from_dict
from gtpo.distributed import DistContext
from gtpo.method.losses import LOSS_AGGS, clipped_policy_loss
from gtpo.model.policy import token_logprobs
from gtpo.training.batch import TokenBatch
from gtpo.training.update import PolicyUpdate, _denominator

LENGTHS = [23, 7, 15, 30, 11, 19]


def ragged_batch(vocab: int, lengths=LENGTHS, seed: int = 0):
    """Right-padded trajectories: a prompt of 4 untrained tokens, then model tokens with an observation gap."""
    gen = torch.Generator().manual_seed(seed)
    rows, width = len(lengths), max(lengths)
    ids = torch.randint(1, vocab, (rows, width), generator=gen)
    attention = torch.zeros(rows, width, dtype=torch.long)
    loss_mask = torch.zeros(rows, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        attention[r, :n] = 1
        loss_mask[r, 4:n] = 1
        loss_mask[r, 4 + n // 3 : 4 + n // 2] = 0  # a tool output inside the trajectory
        ids[r, n:] = 0
    batch = TokenBatch(ids, attention, loss_mask, loss_mask - 1, torch.zeros(rows, width))
    advantages = torch.randn(rows, width, generator=gen) * loss_mask
    return batch, advantages, loss_mask.float()


def config(checkpointing: bool = False, **optim) -> TrainConfig:
    settings = {"micro_batch_tokens": 40, **optim}
    return from_dict(
        {
            "model": {"gradient_checkpointing": checkpointing},
            "optim": settings,
            "rollout": {"max_total_tokens": 32, "temperature": 0.9},
            # The batches here carry no sampler log-probs; the correction has its own test below.
            "algo": {"is_correction": "none"},
        }
    )


def padded_gradients(model, batch, advantages, loss_mask, cfg: TrainConfig, algo: dict):
    model = copy.deepcopy(model)
    temperature = cfg.rollout.temperature
    with torch.no_grad():
        old, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, temperature)
    logp, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, temperature, with_entropy=True)
    denominator = _denominator(algo["loss_agg"], loss_mask, cfg.rollout.max_total_tokens)
    loss, _ = clipped_policy_loss(
        logp, old, advantages, loss_mask, agg=algo["loss_agg"], denominator=denominator, entropy=entropy,
        entropy_coef=algo.get("entropy_coef", 0.0),
    )  # fmt: skip
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def packed_gradients(model, batch, advantages, loss_mask, cfg: TrainConfig, algo: dict):
    model = copy.deepcopy(model)
    if cfg.model.gradient_checkpointing:
        enable_checkpointing(model)
    cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, **algo))
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, grad_clip=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    update = PolicyUpdate(cfg, model, optimizer, scheduler, ctx=DistContext(), device=torch.device("cpu"))
    metrics = update(batch, advantages, loss_mask)
    return metrics, {n: before[n] - p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_packed_micro_batches_give_the_padded_loss_and_gradients(tiny_model, agg):
    batch, advantages, loss_mask = ragged_batch(tiny_model.config.vocab_size)
    cfg = config()
    loss, expected = padded_gradients(tiny_model, batch, advantages, loss_mask, cfg, {"loss_agg": agg})
    metrics, grads = packed_gradients(tiny_model, batch, advantages, loss_mask, cfg, {"loss_agg": agg})
    assert metrics["perf/micro_batches"] >= 3  # 105 tokens in budgets of 40: several passes
    assert metrics["loss/total"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert metrics["loss/ratio_mean"] == pytest.approx(1.0)  # old = current, detached
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert any(g.abs().max() > 0 for g in grads.values())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_entropy_bonus_gradients_match_with_one_trajectory_per_micro_batch(tiny_model, checkpointing):
    batch, advantages, loss_mask = ragged_batch(tiny_model.config.vocab_size, seed=1)
    cfg = config(checkpointing, micro_batch_tokens=1)  # every trajectory is longer: one micro-batch each
    algo = {"loss_agg": "token-mean", "entropy_coef": 0.05}
    loss, expected = padded_gradients(tiny_model, batch, advantages, loss_mask, cfg, algo)
    metrics, grads = packed_gradients(tiny_model, batch, advantages, loss_mask, cfg, algo)
    assert metrics["perf/micro_batches"] == 6  # six trajectories, one per micro-batch
    assert metrics["loss/total"] == pytest.approx(loss, rel=1e-5)
    assert "loss/entropy" in metrics
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_entropy_is_skipped_without_its_coefficient_but_sampled_nll_is_reported(tiny_model):
    batch, advantages, loss_mask = ragged_batch(tiny_model.config.vocab_size)
    metrics, _ = packed_gradients(tiny_model, batch, advantages, loss_mask, config(), {"loss_agg": "token-mean"})
    assert "loss/entropy" not in metrics
    with torch.no_grad():
        logp, _ = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask, 0.9)
    # micro-batch means of -log p over loss tokens, averaged: positive, and near the whole batch's mean
    whole = float(-(logp * loss_mask).sum() / loss_mask.sum())
    assert metrics["loss/sampled_nll"] == pytest.approx(whole, rel=0.2) and whole > 0


def test_several_epochs_compute_old_logprobs_once_and_move_the_ratio(tiny_model):
    """update_epochs 2: the second epoch's ratio is no longer 1 (the first step changed the weights)."""
    batch, advantages, loss_mask = ragged_batch(tiny_model.config.vocab_size)
    cfg = config(update_epochs=2)
    model = copy.deepcopy(tiny_model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    metrics = PolicyUpdate(cfg, model, optimizer, scheduler, ctx=DistContext(), device=torch.device("cpu"))(
        batch, advantages, loss_mask
    )
    assert metrics["loss/ratio_max"] > 1.0 + 1e-4 or metrics["loss/ratio_min"] < 1.0 - 1e-4


def test_bf16_autocast_second_epoch_sees_the_updated_weights(tiny_model):
    """autocast caches bf16 copies of the weights until its outermost context exits. The trainer's step is one
    such context around rollout and update, so after each optimizer step the cache must be dropped, else epoch 2
    computes with epoch 1's weights. The update must come out the same inside an outer autocast as without it."""
    batch, advantages, loss_mask = ragged_batch(tiny_model.config.vocab_size)
    cfg = config(update_epochs=2)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    results = []
    for outer in (contextlib.nullcontext, bf16):
        model = copy.deepcopy(tiny_model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        update = PolicyUpdate(
            cfg, model, optimizer, scheduler, ctx=DistContext(), device=torch.device("cpu"), autocast=bf16
        )
        with outer():
            metrics = update(batch, advantages, loss_mask)
        results.append((metrics, dict(model.named_parameters())))
    (alone, params_alone), (nested, params_nested) = results
    assert alone["loss/ratio_max"] > 1.0 + 1e-3  # the second epoch sees a changed policy
    assert nested["loss/ratio_max"] == pytest.approx(alone["loss/ratio_max"])
    for name, value in params_alone.items():
        torch.testing.assert_close(params_nested[name], value, msg=name)


def test_lora_kl_reference_is_the_base_model_with_adapters_off(tiny_model):
    """With LoRA no reference copy is loaded: the base model (adapters disabled) is the reference."""
    pytest.importorskip("peft")  # an optional extra: gtpo[lora]
    from peft import LoraConfig, get_peft_model

    batch, advantages, loss_mask = ragged_batch(tiny_model.config.vocab_size)
    cfg = config()
    cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, kl_coef=0.1))
    kl = []
    for with_copy in (True, False):
        base = copy.deepcopy(tiny_model)
        reference = copy.deepcopy(base) if with_copy else None
        torch.manual_seed(0)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        for name, param in model.named_parameters():
            if "lora_B" in name:  # a trained adapter: the policy differs from its base
                torch.nn.init.normal_(param, std=0.2)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        update = PolicyUpdate(
            cfg, model, optimizer, scheduler, ctx=DistContext(), device=torch.device("cpu"), ref_model=reference
        )
        kl.append(update(batch, advantages, loss_mask)["loss/kl_ref"])
    assert kl[0] > 1e-4
    assert kl[1] == pytest.approx(kl[0], rel=1e-5)


@pytest.mark.parametrize(("shift", "factor"), [(4.0, 2.0), (0.5, 0.5), (1.0, 1.0)])
def test_importance_weights_scale_the_policy_gradient_by_the_capped_ratio(tiny_model, shift, factor):
    """A sampler that gave every token ``1/shift`` times the trainer's probability gets weight min(shift, cap 2):
    4x -> capped at 2, 0.5x -> 0.5, agreeing -> 1. At ratio 1 the policy gradient is the weight times the
    uncorrected one (no entropy or KL term here), so the expectation is the padded reference times ``factor``."""
    batch, advantages, loss_mask = ragged_batch(tiny_model.config.vocab_size)
    cfg = config()
    with torch.no_grad():
        logp, _ = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask, cfg.rollout.temperature)
    batch = dataclasses.replace(batch, sampler_logprobs=logp - torch.log(torch.tensor(shift)))
    algo = {"loss_agg": "token-mean"}
    loss, expected = padded_gradients(tiny_model, batch, advantages, loss_mask, cfg, algo)
    metrics, grads = packed_gradients(tiny_model, batch, advantages, loss_mask, cfg, algo | {"is_correction": "token"})
    assert metrics["loss/total"] == pytest.approx(loss * factor, rel=1e-4, abs=1e-7)
    assert metrics["loss/is_mismatch_max"] == pytest.approx(abs(float(torch.log(torch.tensor(shift)))), abs=1e-4)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad * factor, rtol=1e-3, atol=1e-6, msg=name)


def test_seq_mean_token_mean_leaves_rows_without_loss_tokens_out_of_its_mean(tiny_model):
    """A row with no loss token (masked as over-long, or a void turn filtered) is not a sequence of the mean.

    Expected value by hand: at one epoch the ratio is 1, so each token's clipped surrogate is -A; the loss is
    the mean over the rows that have loss tokens of each row's mean of -A (not over all six rows)."""
    batch, advantages, loss_mask = ragged_batch(tiny_model.config.vocab_size, seed=2)
    loss_mask[1] = 0.0  # as the trainer's over-long mask or void filter leaves a row
    loss_mask[4] = 0.0
    trained = [r for r in range(len(LENGTHS)) if loss_mask[r].sum() > 0]
    expected = sum(float(-(advantages[r] * loss_mask[r]).sum() / loss_mask[r].sum()) for r in trained) / len(trained)
    metrics, _ = packed_gradients(
        tiny_model, batch, advantages, loss_mask, config(), {"loss_agg": "seq-mean-token-mean"}
    )
    assert len(trained) == 4
    assert metrics["loss/total"] == pytest.approx(expected, rel=1e-5)
