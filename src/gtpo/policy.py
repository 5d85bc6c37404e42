"""Load a causal LM and its tokenizer, and compute token log-probs (and entropy) of given sequences.

Not here: sampling (``gtpo.generate``) and the loss (``gtpo.losses``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint


def load_policy(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any]:
    """A transformers causal LM and its tokenizer from a local directory or a hub name.

    The tokenizer gets a pad token if it has none (its EOS), since batching needs one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(
            f"model.name_or_path: {name_or_path!r} does not exist; give a local model directory or a hub name"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except OSError as err:
        raise OSError(
            f"model.name_or_path: could not load {name_or_path!r} ({err.__class__.__name__}). If this machine "
            "cannot reach the Hugging Face Hub, download the model elsewhere and pass its local directory."
        ) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def prompt_ids(tokenizer: Any, system_prompt: str, question: str) -> list[int]:
    """The chat-template prompt, ending where the assistant's message begins."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


LOGPROB_CHUNK_ELEMENTS = 2**28
"""Logits elements turned into float32 log-probs at once (1 GiB): bounds the float32 copies of [B, T, V]."""


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_elements: int = LOGPROB_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``logp[:, t] = log p(input_ids[:, t] | input_ids[:, :t])`` under ``logits / temperature``.

    Shapes [B, T]; position 0 has no prefix and gets 0. Sequences are right-padded (positions start at 0,
    as in generation). The temperature must be the sampler's, so that the ratio is 1 before any update.
    Entropy [B, T] is that of the same tempered distribution at each position.

    Memory: a float32 copy of all logits is 4 x 8k tokens x 152k vocabulary x 4 B = 20 GB for a Qwen2.5
    micro-batch, more than its model state. So the float32 work runs over chunks of positions of at most
    ``chunk_elements`` logits, each recomputed in the backward pass (activation checkpointing) instead of
    kept; only the model's own (bf16 under autocast) logits stay alive.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    batch, width, vocab = logits.shape
    step = max(1, chunk_elements // max(1, batch * vocab))
    checkpointed = torch.is_grad_enabled() and logits.requires_grad and width > step
    logps, entropies = [], []
    for lo in range(0, width, step):
        part = (logits[:, lo : lo + step], targets[:, lo : lo + step], temperature, with_entropy)
        if checkpointed:
            logp, entropy = torch.utils.checkpoint.checkpoint(_logprob_chunk, *part, use_reentrant=False)
        else:
            logp, entropy = _logprob_chunk(*part)
        logps.append(logp)
        entropies.append(entropy)
    logp = torch.nn.functional.pad(torch.cat(logps, dim=1), (1, 0))
    entropy = torch.nn.functional.pad(torch.cat(entropies, dim=1), (1, 0)) if with_entropy else None
    return logp, entropy


def _logprob_chunk(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 log-probs of ``targets`` (and entropies; empty when not asked) for a [B, t, V] logits chunk."""
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[..., None]).squeeze(-1) - log_norm
    if not with_entropy:
        return logp, logp.new_empty(0)
    entropy = log_norm - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, entropy


def inference_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's full weights under the plain HF names an inference engine loads.

    FSDP2 shards are gathered (every rank gets the full tensors: each rank feeds its own engine); a LoRA
    policy is merged for the copy and unmerged again, and its ``base_layer``/``lora_`` names are mapped back
    to the base model's. Called after each optimizer step by samplers that hold their own weights (vLLM).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if hasattr(module, "merge_adapter") and hasattr(module, "get_base_model"):
        module.merge_adapter()
        try:
            state = {k: v.detach().clone() for k, v in module.get_base_model().state_dict().items()}
        finally:
            module.unmerge_adapter()
        return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
