"""The update's log-prob path never holds [batch, T, V] logits, and its chunked head holds one chunk of them at a
time; counted with benchmarks/lm_head_memory.py's AllocationTracker, which is checked first."""

import importlib.util
import sys
from pathlib import Path

import torch

from gtpo.model.head_logprobs import head_logprobs
from gtpo.model.policy import packed_token_logprobs

_path = Path(__file__).parents[1] / "benchmarks" / "lm_head_memory.py"
_spec = importlib.util.spec_from_file_location("lm_head_memory", _path)
bench = importlib.util.module_from_spec(_spec)
sys.modules["lm_head_memory"] = bench
_spec.loader.exec_module(bench)


class ShapeLog(bench.AllocationTracker):
    """The tracker, also keeping the shape of every tensor an operation creates."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def _count(self, tensor: torch.Tensor) -> None:
        self.shapes.append(tuple(tensor.shape))
        super()._count(tensor)


def test_tracker_counts_live_bytes_largest_tensor_and_skips_views():
    with bench.AllocationTracker() as tracker:
        a = torch.ones(100)  # 400 B
        b = torch.ones(200)  # 800 B: 1200 live
        a.view(10, 10).add_(1)  # a view and an in-place result: no new storage
        del a  # 800 live
        c = torch.ones(50)  # 1000 live, the peak stays 1200
    assert (tracker.peak, tracker.live) == (1200, 1000)
    assert (tracker.largest_numel, tracker.largest_shape) == (200, (200,))
    del b, c


def test_packed_path_never_materialises_batch_by_vocab_logits_and_equals_full_logits():
    batch, width, vocab, rows = 2, 24, 3000, 8
    model = bench.build_model(vocab, hidden=16, layers=1)
    ids = torch.randint(0, vocab, (batch, width), generator=torch.Generator().manual_seed(0))
    scored = torch.cat([torch.arange(1, width) + r * width for r in range(batch)])
    with ShapeLog() as log:
        logp, _ = packed_token_logprobs(
            model, ids.reshape(1, -1), (width,) * batch, scored, chunk_elements=rows * vocab
        )
        logp.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with_vocab = [s for s in log.shapes if vocab in s and s not in ((vocab, 16), (16, vocab))]  # weight-shaped
    assert with_vocab and max(torch.Size(s).numel() for s in with_vocab) == rows * vocab  # one chunk at most
    model.zero_grad()
    expected = bench.naive_logprobs(model, ids)  # full [batch, T, V] logits
    expected.sum().backward()
    torch.testing.assert_close(logp.view(batch, width - 1), expected, atol=1e-5, rtol=0)
    for got, want in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_chunked_head_holds_one_chunk_of_logits_at_a_time():
    """Forward and backward of the head alone: what is live beyond inputs and gradients is one chunk's logits
    (two with the entropy), never the three that out-of-place products held."""
    gen = torch.Generator().manual_seed(0)
    count, hidden_size, vocab, rows = 64, 4, 5000, 16
    chunk = rows * vocab * 4  # bytes of one chunk of float32 logits: 320 kB; the weight is 80 kB
    for with_entropy, chunks in ((False, 1), (True, 2)):
        hidden = torch.randn(count, hidden_size, generator=gen, requires_grad=True)
        weight = torch.randn(vocab, hidden_size, generator=gen, requires_grad=True)
        targets = torch.randint(0, vocab, (count,), generator=gen)
        with bench.AllocationTracker() as tracker:
            logp, entropy = head_logprobs(
                hidden, weight, targets, with_entropy=with_entropy, chunk_elements=rows * vocab
            )
            loss = logp.sum() + (entropy.sum() if with_entropy else 0)
            loss.backward()
        # Besides the chunks: the weight's gradient and one chunk's product for it, hidden's gradient, per-row
        # vectors. All of it is under one weight size twice plus 10 kB.
        others = 2 * vocab * hidden_size * 4 + count * hidden_size * 4 + 10_000
        assert chunks * chunk <= tracker.peak <= chunks * chunk + others, (with_entropy, tracker.peak)
