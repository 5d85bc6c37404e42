"""Memory of the update's token log-prob path at a real vocabulary size: the chunked LM head against full logits.

Run: ``python benchmarks/lm_head_memory.py [--batch 4] [--tokens 1024] [--hidden 896] [--vocab 151936]``

Both paths score every token of ``batch`` sequences of ``tokens`` tokens with a Qwen2-shaped model (Qwen2.5-0.5B's
hidden size and vocabulary by default, ``--layers`` decoder layers: the head is what differs, not the layers),
forward and backward of the summed log-probs, float32 on the CPU:
- ``chunked``: what the update runs, ``gtpo.model.policy.packed_token_logprobs`` (sequences packed into one row, the
  LM head applied a chunk of rows at a time by ``gtpo.model.head_logprobs``, no [batch, T, V] tensor);
- ``naive``: ``model(ids).logits`` [batch, T, V] float32, ``log_softmax``, ``gather``.
Each path runs in a fresh process, which reports two figures: the growth of its resident memory during the path
(peak RSS from /proc, reset just before), and the peak of live tensor bytes that the path's own operations
allocated (counted by ``AllocationTracker`` at the dispatcher, so it excludes the model and the allocator's
caching), with the largest single tensor. The log-probs of both paths are compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

GiB = 2**30


class AllocationTracker(TorchDispatchMode):
    """Counts the tensors that operations create while the mode is on: the peak of their live bytes (a tensor
    stops counting when it is freed) and the largest one. Views and in-place results share a storage already
    counted, so only results with a storage not seen alive before count."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest_numel = 0
        self.largest_shape: tuple[int, ...] = ()
        self.largest_dtype: torch.dtype | None = None
        self._storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self._count(tensor)  # not a view of an input nor an in-place result
        return out

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self._storages:
            return
        nbytes = storage.nbytes()
        self._storages.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        if tensor.numel() > self.largest_numel:
            self.largest_numel, self.largest_shape, self.largest_dtype = (
                tensor.numel(),
                tuple(tensor.shape),
                tensor.dtype,
            )
        weakref.finalize(tensor, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        if key in self._storages:
            self._storages.discard(key)
            self.live -= nbytes


def build_model(vocab: int, hidden: int, layers: int, seed: int = 0) -> torch.nn.Module:
    """Qwen2-shaped (Qwen2.5-0.5B's head count and MLP ratio), random weights, untied head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    heads = max(1, hidden // 64)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 27 // 5,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 7) if heads % 7 == 0 else heads,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).eval()


def chunked_logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The update's path: packed rows, chunked head, every position but each sequence's first scored. [B, T-1]"""
    from gtpo.model.policy import packed_token_logprobs

    batch, width = ids.shape
    scored = torch.cat([torch.arange(1, width) + row * width for row in range(batch)])
    logp, _ = packed_token_logprobs(model, ids.reshape(1, -1), (width,) * batch, scored)
    return logp.view(batch, width - 1)


def naive_logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Full [B, T, V] float32 logits, then log_softmax and gather. [B, T-1]"""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


PATHS = {"chunked": chunked_logprobs, "naive": naive_logprobs}


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(path: str, args: argparse.Namespace, save: str) -> dict:
    """Run one path (forward + backward) in this process and return its memory figures."""
    torch.set_num_threads(args.threads)
    model = build_model(args.vocab, args.hidden, args.layers)
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(1))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _rss_bytes("VmRSS")
    tracker = AllocationTracker()
    start = time.perf_counter()
    with tracker:
        logp = PATHS[path](model, ids)
        logp.sum().backward()
    seconds = time.perf_counter() - start
    torch.save(logp.detach(), save)
    return {
        "path": path,
        "seconds": seconds,
        "peak_rss_growth": _rss_bytes("VmHWM") - before,
        "peak_live_tensors": tracker.peak,
        "largest_shape": list(tracker.largest_shape),
        "largest_bytes": tracker.largest_numel * torch.finfo(tracker.largest_dtype).bits // 8,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", default="chunked,naive")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args, args.save)))
        return
    print(
        f"batch {args.batch} x {args.tokens} tokens, vocab {args.vocab:,}, hidden {args.hidden}, {args.layers} layers "
        f"(a [batch, T, V] float32 tensor is {args.batch * args.tokens * args.vocab * 4 / GiB:.2f} GiB)"
    )
    results, logps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths.split(","):
            save = f"{tmp}/{path}.pt"
            child = [sys.executable, __file__, *sys.argv[1:], "--child", path, "--save", save]
            done = subprocess.run(child, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{path}: failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
                continue
            results[path] = json.loads(done.stdout.strip().splitlines()[-1])
            logps[path] = torch.load(save)
            r = results[path]
            print(
                f"{path:8s} peak RSS growth {r['peak_rss_growth'] / GiB:6.2f} GiB   peak live tensors "
                f"{r['peak_live_tensors'] / GiB:6.2f} GiB   largest tensor {r['largest_shape']} "
                f"{r['largest_bytes'] / GiB:.2f} GiB   {r['seconds']:.1f} s"
            )
    if {"chunked", "naive"} <= results.keys():
        c, n = results["chunked"], results["naive"]
        print(
            f"naive / chunked: peak RSS growth {n['peak_rss_growth'] / c['peak_rss_growth']:.1f}x, "
            f"peak live tensors {n['peak_live_tensors'] / c['peak_live_tensors']:.1f}x; "
            f"max |log-prob difference| {(logps['chunked'] - logps['naive']).abs().max().item():.2e}"
        )


if __name__ == "__main__":
    main()
