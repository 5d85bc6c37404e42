"""The reference sampler, frozen: ``HFSampler`` as it stood on 2026-11-29 (commit ecb868d, ``src/gtpo/generate.py``),
before gtpo had its own generation engine.

Why a frozen copy: ``benchmarks/rollout.py`` states its speed-ups against this one fixed sampler, so that a change
to ``gtpo.generation.hf.HFSampler`` cannot move the baseline a claim was measured against. The code below is that
commit's, unchanged but for the imports and one adapter (``stop_at_code_block``: it only ever stopped at a closed
python block, so that is the only value it takes). It is the plain transformers loop: left-padded batches, the
model's dynamic KV cache, every row of a turn until the longest is done.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from gtpo.generation.protocol import Sample
from gtpo.tools import has_closed_code_block


class ReferenceSampler:
    """``HFSampler`` of 2026-11-29 (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = _eos_ids(tokenizer)
        # transformers >= 5.2x renamed `past_key_values` to `cache`; accept both.
        forward = getattr(model, "forward", model)
        self._cache_arg = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        # Only tokens that can close a code fence trigger the (decoding) stop check.
        self._fence_tokens = {
            i for tok, i in tokenizer.get_vocab().items() if "`" in tokenizer.convert_tokens_to_string([tok])
        }

    @torch.no_grad()
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
        if not stop_at_code_block:
            raise ValueError("the reference sampler always stops at a closed python block")
        if not contexts:
            return []
        device = next(self.model.parameters()).device
        batch = len(contexts)
        width = max(len(c) for c in contexts)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((batch, width), pad, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, context in enumerate(contexts):
            ids[row, width - len(context) :] = torch.tensor(list(context))
            mask[row, width - len(context) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)

        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = _cache_of(out), out.logits[:, -1].float()
        next_pos = positions[:, -1] + 1
        samples = [Sample([], [], "length") for _ in range(batch)]
        done = [max_new_tokens[r] <= 0 for r in range(batch)]
        for _ in range(max(max_new_tokens)):
            if all(done):
                break
            tokens, logps = _sample(logits, temperature, top_p, generator)
            for row in range(batch):
                if done[row]:
                    continue
                token = int(tokens[row])
                sample = samples[row]
                sample.token_ids.append(token)
                sample.logprobs.append(float(logps[row]))
                if token in self.eos_ids:
                    sample.finish, done[row] = "eos", True
                elif token in self._fence_tokens and has_closed_code_block(
                    self.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
                ):
                    sample.finish, done[row] = "stop", True
                elif len(sample.token_ids) >= max_new_tokens[row]:
                    done[row] = True
            if all(done):
                break
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
            out = self.model(
                input_ids=tokens[:, None].to(device),
                attention_mask=mask,
                position_ids=next_pos[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
            )
            cache, logits = _cache_of(out), out.logits[:, -1].float()
            next_pos = next_pos + 1
        return samples


def _cache_of(output: Any) -> Any:
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return it with its log-prob under the tempered (unfiltered) distribution."""
    if temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
        probs = filtered / filtered.sum(-1, keepdim=True)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _eos_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids
