"""Load a causal LM and its tokenizer, and compute token log-probs (and entropy) of given sequences.

Two ways to score tokens:
- ``token_logprobs``: right-padded rows [B, T], the model's full logits; simple, and what generation-side checks
  compare against;
- ``packed_token_logprobs``: the update's path. Whole sequences are packed into one row without padding
  (positions restart at 0 at each sequence), attention runs within each sequence only, and the LM head is
  applied in chunks to the scored positions alone (``gtpo.model.head_logprobs``), so no [B, T, V] logits exist.
  It runs through the model's own forward (the head's forward is swapped for the chunked one for the call),
  so DDP and FSDP2 hooks fire as for any forward. See docs/training_speed.md.

Not here: sampling (``gtpo.generation``), packing trajectories (``gtpo.training.batch``) and the loss
(``gtpo.method.losses``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint

from gtpo.model.head_logprobs import CHUNK_ELEMENTS, head_logprobs


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
    model = model.to(device)
    if torch.device(device).type == "cpu":
        own_memory(model)
    return model, tokenizer


def own_memory(model: torch.nn.Module) -> None:
    """Give every parameter memory of its own, allocated by torch.

    On a CPU, transformers leaves the weights it loads from a safetensors file mapped from that file,
    copy-on-write and at the file's byte offsets (not aligned for vector loads): the first optimizer step then
    copies every page of the weights as it writes them (3.6 s for SmolLM2-135M's 538 MB on 2 cores, against
    0.03 s for the same writes afterwards), and until then a process rewriting the file in place changes the
    loaded model. One copy at load costs a fraction of that. Tied weights stay tied (one parameter object, one
    new tensor). Buffers are left as they are (a Llama's or Qwen2's rotary frequencies are computed at init,
    not read from the file)."""
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone(memory_format=torch.contiguous_format)


def prompt_ids(tokenizer: Any, system_prompt: str, question: str) -> list[int]:
    """The chat-template prompt, ending where the assistant's message begins.

    Remembered for recent prompts (keyed by the tokenizer, its template and the two texts): a step asks for each
    of its prompts once per trajectory of the group, and rendering the template costs milliseconds.
    """
    template = getattr(tokenizer, "chat_template", None)
    template = template if template is None or isinstance(template, str) else repr(template)  # (a dict of several)
    return list(_prompt_ids(tokenizer, template, system_prompt, question))


@functools.lru_cache(maxsize=4096)
def _prompt_ids(tokenizer: Any, template: Any, system_prompt: str, question: str) -> tuple[int, ...]:
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tuple(tokenizer.encode(text, add_special_tokens=False))


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


PACKED_ATTENTION = "gtpo_packed"
"""The attention implementation registered with transformers for packed rows (``packed_sdpa``), switched on
by ``packed_attention_active`` only while packed rows go through the model."""


def packed_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    seq_lens: Sequence[int],
    scored: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(input_ids[0, j] | input_ids[0, start(j):j])`` [M] for each packed position j in ``scored``.

    ``input_ids`` [1, N] holds whole sequences back to back, of lengths ``seq_lens`` (summing to N); a scored
    position must not be the first of its sequence (it has no prefix). ``model`` may be the plain causal LM
    or its DDP/FSDP2 wrapper. Entropy [M] (of the same tempered distribution) only when asked: it costs a pass
    over the vocabulary. Float32 results; the matmuls follow the caller's autocast.
    """
    if sum(seq_lens) != input_ids.shape[1] or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, sum(seq_lens)], got {tuple(input_ids.shape)} for {sum(seq_lens)}")
    lm = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    positions = torch.cat([torch.arange(n, device=input_ids.device) for n in seq_lens])[None]
    head = lm.get_output_embeddings()
    targets = input_ids[0, scored]

    def chunked_head(hidden: torch.Tensor) -> torch.Tensor:
        # hidden [1, N, H]; the state at position j - 1 predicts token j.
        logp, entropy = head_logprobs(
            hidden[0, scored - 1],
            head.weight,
            targets,
            bias=head.bias,
            temperature=temperature,
            with_entropy=with_entropy,
            chunk_elements=chunk_elements,
        )
        return torch.stack([logp, entropy], 1) if with_entropy else logp[:, None]

    with packed_attention_active(lm), _swapped_forward(head, chunked_head):
        out = model(input_ids=input_ids, position_ids=positions, use_cache=False, packed_seq_lens=tuple(seq_lens))
    scores = out.logits
    return scores[:, 0], (scores[:, 1] if with_entropy else None)


@contextlib.contextmanager
def _swapped_forward(module: torch.nn.Module, forward: Any) -> Iterator[None]:
    """Run ``forward`` in place of ``module.forward`` (an instance attribute, removed afterwards)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@contextlib.contextmanager
def packed_attention_active(model: torch.nn.Module) -> Iterator[None]:
    """Switch the model's attention to ``packed_sdpa`` (its config is shared by every layer); the previous
    implementation (sdpa, or whatever generation uses) comes back afterwards.

    ``packed_token_logprobs`` does this for its forward. Under gradient checkpointing the layers run their
    forward again during the backward pass, so a backward through packed log-probs must run inside this too.
    """
    lm = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    config = lm.config
    previous = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    packed_seq_lens: tuple[int, ...] = (),
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence: SDPA (flash kernels on GPUs) once per sequence.

    query [1, heads, N, d] and key/value [1, kv_heads, N, d] hold the sequences of ``packed_seq_lens`` back to
    back; no token attends across a boundary, and no N x N mask is built (transformers builds none for an
    implementation it does not know). Returns [1, N, heads, d] as transformers' attention functions do.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if sliding_window is not None:
        raise ValueError("packed attention does not implement sliding-window layers; this model needs padding")
    if sum(packed_seq_lens) != query.shape[2] or query.shape[0] != 1:
        raise ValueError(f"packed attention: sequence lengths {packed_seq_lens} do not tile {tuple(query.shape)}")
    # torch.split, not slicing: the backward of a split is one concatenation, while each slice's backward
    # would write its gradient into a zero tensor the size of the whole row (quadratic in sequences).
    queries, keys, values = (torch.split(t, list(packed_seq_lens), dim=2) for t in (query, key, value))
    outputs = [
        sdpa_attention_forward(module, q, k, v, None, dropout, scaling, is_causal=True)[0]
        for q, k, v in zip(queries, keys, values, strict=True)
    ]
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)), None


def _register_packed_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)


_register_packed_attention()


@contextlib.contextmanager
def checkpointing_active(lm: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Make transformers' gradient checkpointing (``gradient_checkpointing_enable``) take effect in eval mode.

    transformers only checkpoints a layer whose ``training`` flag is set, and the trainer keeps the policy in
    eval mode (no dropout, so the first-epoch ratio is exactly 1). This sets the flag on the checkpointed
    layers alone, not on their children, so dropout inside them stays off.
    """
    layers = [m for m in lm.modules() if enabled and getattr(m, "gradient_checkpointing", False) is True]
    flags = [m.training for m in layers]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m, flag in zip(layers, flags, strict=True):
            m.training = flag


def compile_layers(lm: torch.nn.Module) -> int:
    """``torch.compile`` (dynamic shapes) the MLP and the norms of every decoder layer, in place; returns how
    many modules. These hold most of a layer's elementwise work (SiLU x up, RMSNorm in float32), which
    compilation fuses into few kernels. Attention stays eager: ``packed_sdpa`` loops over a packed row's
    sequences, and a compiled graph would specialize on their number and lengths."""
    compiled = 0
    for layer in lm.modules():
        if not type(layer).__name__.endswith("DecoderLayer"):
            continue
        for child in layer.children():
            if child is getattr(layer, "mlp", None) or type(child).__name__.endswith("RMSNorm"):
                child.compile(dynamic=True)
                compiled += 1
    return compiled


def check_packed_logprobs(lm: torch.nn.Module) -> None:
    """Refuse a model whose packed log-probs differ from its plain forward's (a model that post-processes its
    logits, or whose attention ignores the packing): two short sequences, scored both ways."""
    weight = lm.get_output_embeddings().weight
    vocab, device = weight.shape[0], weight.device
    atol = 1e-3 if weight.dtype == torch.float32 else 5e-2
    ids = torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        expected, _ = token_logprobs(lm, ids, torch.ones_like(ids))
        scored = torch.tensor([1, 2, 3, 4, 5, 7, 8, 9, 10, 11], device=device)
        packed, _ = packed_token_logprobs(lm, ids.reshape(1, -1), (6, 6), scored)
    if not torch.allclose(packed, expected[:, 1:].reshape(-1).float(), atol=atol):
        raise ValueError(
            f"{type(lm).__name__}: packed log-probs differ from the model's own logits (does it post-process "
            "its logits or use sliding-window attention?); gtpo's update supports plain causal LMs (Qwen2, Llama)"
        )


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
