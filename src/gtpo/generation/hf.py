"""Samplers: continue a batch of token contexts until a turn ends. HF transformers and a scripted one.

A turn ends when its text contains a closed python block ("stop": the rollout runs the code), at EOS, or at
its token cap ("length"). Samplers return token ids exactly as sampled with their log-probs, so the rollout
never re-tokenizes model text. The vLLM backend lives in ``generate_vllm`` (optional extra).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from gtpo.tools import has_closed_code_block

SampleFinish = Literal["stop", "eos", "length"]


@dataclass
class Sample:
    """One continuation: sampled ids, their log-probs under ``logits / temperature``, and why it ended."""

    token_ids: list[int]
    logprobs: list[float]
    finish: SampleFinish


class EngineFailed(RuntimeError):
    """An out-of-process or third-party generation engine (vLLM) failed: the run cannot go on with it, and the
    error says so in one line instead of the engine's traceback."""


class Sampler(Protocol):
    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Sample]: ...


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
        self.eos_ids = _eos_ids(tokenizer)
        # transformers >= 5.2x renamed `past_key_values` to `cache`; accept both.
        forward = getattr(model, "forward", model)
        self._cache_arg = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        self._fence_tokens = fence_token_ids(tokenizer)

    @torch.no_grad()
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
                finish = turn_end(sample.token_ids, self.tokenizer, self.eos_ids, self._fence_tokens)
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


def fence_token_ids(tokenizer: Any) -> set[int]:
    """Tokens whose text holds a backtick: only these can close a code block, so only they need the (decoding)
    closed-block check of ``turn_end``."""
    return {i for tok, i in tokenizer.get_vocab().items() if "`" in tokenizer.convert_tokens_to_string([tok])}


def turn_end(token_ids: Sequence[int], tokenizer: Any, eos_ids: set[int], fence_ids: set[int]) -> SampleFinish | None:
    """Whether a turn whose sampled tokens so far are ``token_ids`` ends at its last token, and why.

    The one turn-stop rule of every backend: an EOS token ends it ("eos"); a token that can close a fence ends it
    when the decoded turn then holds a closed python block ("stop": the rollout runs the code). The token cap
    ("length") is the caller's to check. Decoding only at fence tokens keeps the check off the common path.
    """
    last = token_ids[-1]
    if last in eos_ids:
        return "eos"
    if last in fence_ids and has_closed_code_block(tokenizer.decode(list(token_ids), skip_special_tokens=True)):
        return "stop"
    return None


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


class ScriptedSampler:
    """Returns pre-written turns: for tests of the exact bookkeeping, with no model.

    ``respond(context_text, turn_index) -> str`` gives the next turn's text; the text is tokenized as is and,
    unless it ends with a closed python block, EOS is appended (the model ended its message). Log-probs are
    0 (probability 1). ``turn_index`` counts the tool outputs already in the context.
    """

    def __init__(self, tokenizer: Any, respond: Callable[[str, int], str]) -> None:
        self.tokenizer = tokenizer
        self.respond = respond

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Sample]:
        samples = []
        for context, cap in zip(contexts, max_new_tokens, strict=True):
            text = self.tokenizer.decode(list(context))
            reply = self.respond(text, text.count("```output"))
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            finish: SampleFinish = "stop" if has_closed_code_block(reply) else "eos"
            if finish == "eos":
                ids = [*ids, self.tokenizer.eos_token_id]
            if len(ids) > cap:
                ids, finish = ids[:cap], "length"
            samples.append(Sample(ids, [0.0] * len(ids), finish))
        return samples
