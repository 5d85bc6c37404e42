"""``HFSampler``: the plain transformers loop, the reference the engine is tested against (``--generation.backend hf``).

A turn ends by the rule of ``gtpo.generation.stop``: a closed python block ("stop": the rollout runs the code),
EOS, or its token cap ("length"). Samplers return token ids exactly as sampled with their log-probs, so the
rollout never re-tokenizes model text. The protocol every sampler follows is ``gtpo.generation.protocol``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from gtpo.generation.protocol import Sample
from gtpo.generation.stop import TurnStop


def left_padded(contexts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``contexts`` padded on the left to the longest, so every row's next token is
    generated at the same column."""
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, context in enumerate(contexts):
        ids[row, width - len(context) :] = torch.tensor(list(context))
        mask[row, width - len(context) :] = 1
    return ids, mask


class HFSampler:
    """Batched sampling with a transformers causal LM and its KV cache (CPU or GPU).

    Contexts are left-padded with explicit position ids, so a row's positions are 0.. as in training
    and a batched result equals the unbatched one. Temperature 0 is greedy decoding (log-probs then come
    from the untempered distribution).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop = TurnStop.of(tokenizer)
        # transformers >= 5.2x renamed `past_key_values` to `cache`; accept both.
        forward = getattr(model, "forward", model)
        self._cache_arg = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"

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
        if not contexts:
            return []
        device = next(self.model.parameters()).device
        batch = len(contexts)
        ids, mask = left_padded(contexts, self.tokenizer.pad_token_id or 0)
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
                finish = self.stop.ends(sample.token_ids, stop_at_code_block)
                if finish is not None:
                    sample.finish, done[row] = finish, True
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
