"""The vLLM generation backend (GPU, optional extra ``pip install 'gtpo[vllm]'``).

It honours the same contract as ``HFSampler``: token ids exactly as sampled (``CompletionOutput.token_ids``,
never re-tokenized text), the sampled tokens' log-probs, and a turn that ends at the close of a python block.
vLLM has no "closed block" stop condition, so the closing fence (three backticks ending a line) is
matched with stop strings that keep the stop text, and the finish reason is then decided by
``has_closed_code_block`` on the decoded text, exactly as the HF sampler decides it.

The engine runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) beside the policy, sharing the
GPU (``gpu_memory_utilization``); ``sync_weights`` copies the policy's parameters into it after each update.
Log-probs: the trainer recomputes old log-probs with the policy, so vLLM's (which may differ in numerics
or in whether temperature is applied, depending on the vLLM version) are diagnostics only.

Tested here only against a stand-in of vLLM's API (no GPU in CI); see docs/distributed.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from gtpo.generate import Sample, SampleFinish, _eos_ids
from gtpo.tools import has_closed_code_block

STOP_STRINGS = ("```\n",)
"""A fence that ends a line. The opening fence ``\u0060\u0060\u0060python`` never matches; a match that
is not a block's close (a stray fence) is told apart by ``has_closed_code_block`` and reported as ``eos``."""


def import_vllm() -> Any:
    """Import vllm or say how to get it: it is an optional extra that needs a CUDA machine."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "rollout.backend='vllm' needs the vllm package, which is not installed. Install it on a GPU machine "
            "with `pip install 'gtpo[vllm]'`, or set --rollout.backend hf."
        ) from err
    return vllm


class VLLMSampler:
    """Batched sampling with a colocated vLLM engine; ``sync_weights`` after each optimizer step."""

    def __init__(
        self,
        model_path: str,
        *,
        gpu_memory_utilization: float = 0.4,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        llm: Any = None,
        tokenizer: Any = None,
    ) -> None:
        """``llm`` replaces the engine this builds (tests, or an engine the caller configured itself)."""
        self.vllm = import_vllm()
        if llm is None:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            llm = self.vllm.LLM(
                model=model_path,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                enable_prefix_caching=True,
            )
        self.llm = llm
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        self.eos_ids = _eos_ids(self.tokenizer)

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Sample]:
        if not contexts:
            return []
        prompts = [{"prompt_token_ids": list(c)} for c in contexts]
        params = [
            self.vllm.SamplingParams(
                n=1,
                temperature=max(temperature, 0.0),
                top_p=top_p,
                max_tokens=max(int(cap), 1),
                stop=list(STOP_STRINGS),
                include_stop_str_in_output=True,
                logprobs=0,
                seed=None if seed is None else seed + row,
            )
            for row, cap in enumerate(max_new_tokens)
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [self._to_sample(out.outputs[0], int(cap)) for out, cap in zip(outputs, max_new_tokens, strict=True)]

    def _to_sample(self, completion: Any, cap: int) -> Sample:
        ids = list(completion.token_ids)[: max(cap, 0)]
        logprobs = [_sampled_logprob(step, token) for step, token in zip(completion.logprobs or [], ids, strict=False)]
        logprobs += [0.0] * (len(ids) - len(logprobs))
        finish: SampleFinish = "length"
        if ids and ids[-1] in self.eos_ids:
            finish = "eos"
        elif has_closed_code_block(self.tokenizer.decode(ids, skip_special_tokens=True)):
            finish = "stop"
        elif completion.finish_reason == "stop":
            finish = "eos"  # a stray fence: the model ended the message without a runnable block
        return Sample(ids, logprobs, finish)

    @torch.no_grad()
    def sync_weights(self, named_parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the policy's current weights into the engine (names as in the HF model's state dict)."""
        weights = [(name, tensor.detach()) for name, tensor in named_parameters]
        engine_model = _engine_model(self.llm)
        engine_model.load_weights(weights)
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()  # cached prefixes hold activations of the old weights


def _sampled_logprob(step: Any, token: int) -> float:
    """vLLM gives, per position, a dict token -> Logprob (with ``logprobs=0``: just the sampled token)."""
    entry = step.get(token) if isinstance(step, dict) else None
    if entry is None:
        return 0.0
    return float(getattr(entry, "logprob", entry))


def _engine_model(llm: Any) -> Any:
    """The engine's torch model, for in-process weight loading (vLLM V1 and V0 layouts)."""
    executor = getattr(getattr(llm, "llm_engine", None), "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    for path in (("worker", "model_runner", "model"), ("model_runner", "model")):
        node = worker
        for attr in path:
            node = getattr(node, attr, None)
        if node is not None and hasattr(node, "load_weights"):
            return node
    raise RuntimeError(
        "cannot reach the vLLM engine's model to sync weights: run vLLM in-process "
        "(VLLM_ENABLE_V1_MULTIPROCESSING=0, tensor_parallel_size=1) or use the verl integration for "
        "multi-GPU inference engines (docs/distributed.md)."
    )
