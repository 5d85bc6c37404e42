"""The engine's compact forward: a Llama-family decoder in few tensor operations, over the slot KV cache.

Why: on a CPU a small model's forward costs its number of operations more than its arithmetic. transformers'
modeling code runs some fifty tensor operations and a dozen Python module calls per layer (rotary embeddings
recomputed, q, k and v projected and rotated separately, masks prepared); for the shipped tiny model (4 layers,
hidden 128) that is most of a decode step. This forward computes the same function with about sixteen per layer:

- one projection for q, k and v together and one for the MLP's gate and up: their weights are fused into one
  tensor each and the model's own ``q_proj``/``k_proj``/... weights become views of it, so a weight sync that
  fills the model's parameters fills the fused tensors too (no second copy);
- rotary embeddings of q and k in one pass, from cos/sin tables of every position computed once by the model's
  own rotary module; torch's fused RMSNorm;
- the attention of ``gtpo.generation.engine.attention`` on the same cache and plan.

On a CPU in float32 it computes the same bits as the model's own forward (tested on the shipped model): each
product is the same matrix product on the same rows (a fused projection's columns are the separate ones'), and
where a cheaper form rounds differently it is not used (a residual added inside ``addmm``, the head on a copied
last row). So the default run samples the same tokens whichever path the engine takes.

One exception, for models whose weights do not fit in a core's cache (``STREAMED_WEIGHT_BYTES``): a few rows
times such a weight reads the whole weight from memory for little arithmetic, and the CPU's BLAS reads it far
faster as W·hᵀ than as h·Wᵀ (``F.linear``'s form). There, the products of a decode step and the LM head (a few
rows in every call) are computed as W·hᵀ: the same function, rounded differently, within the agreement check's
tolerance. The shipped tiny models' weights are all smaller, so their tokens stay those of the model's own forward.

In bfloat16 (the engine's dtype for large models on CPUs with bf16 products, ``weights.engine_dtype``) every
product runs instead on a copy of its weight laid out once in oneDNN's own format (``PACKED_DTYPES``): the bits of
``F.linear``, faster at every row count measured, for a second copy of the weights (270 MB for SmolLM2), refreshed
after each weight sync. The agreement check then allows bf16 rounding (``LOW_PRECISION_AGREEMENT``). In float32,
a model whose weights are streamed also gets packed copies, for decode steps of 2 rows or more
(``PACK_STREAMED_FLOAT32``): rounded differently, like W·hᵀ, and faster from 2 rows on.

What it covers: decoders whose layers are exactly that computation (``COMPACT_MODEL_TYPES``: pre-norm RMSNorm,
rotary embeddings with a static frequency table, grouped-query attention with optional q/k/v bias and no o bias,
a SiLU-gated MLP without bias). ``CompactForward.of`` checks the model's config and then compares the two forwards
on a short input; any other model runs transformers' modeling code with the engine's attention function. It is
the engine's path on a CPU only: on CUDA a decode step is one CUDA-graph replay, where the number of operations
no longer matters, and the transformers path is the one measured there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gtpo.generation.engine.attention import AttentionPlan, decode_attention, prefill_attention, write_kv

COMPACT_MODEL_TYPES = ("llama", "qwen2", "mistral")
"""transformers model types whose decoder layers are the computation ``CompactForward`` implements."""
HEAD_BLOCK = 1024
"""Vocabulary rows of the LM head multiplied at once (as h·Wᵀ, for a head smaller than ``STREAMED_WEIGHT_BYTES``).
A few rows times a large vocabulary is a skinny product that the CPU's BLAS runs far below its rate (SmolLM2's
49,152 x 576 head at 8 rows: 54 ms whole, 35 ms in blocks of 512-1024 rows, best of 9 on 2 shared cores); each
block's columns are the whole product's, bit for bit."""
STREAMED_WEIGHT_BYTES = 1 << 20
"""A model whose decode-step weights (each layer's q/k/v, o, gate/up and down) are all at least this large (a core's
L2 cache on the machines measured) multiplies them, and its LM head, as W·hᵀ when few rows go through: there the
product streams the weight from memory, and MKL reads it about 1.6x faster in that form (SmolLM2-135M, 8 rows,
every weight of a decode step in turn, 2 threads: 91-120 ms against 148-195 ms; the head alone 18 ms against 32 ms
in blocks). Smaller weights stay in cache, where the two forms run alike and ``F.linear`` keeps the model's bits."""
LOW_PRECISION_AGREEMENT = 5e-2
"""How far (relative to the logits' scale) the two forwards may differ in bfloat16/float16 at build. Both round
at every operation, differently (torch's fused RMSNorm, fused projections), and the gap grows with depth:
SmolLM2-135M (30 layers) in bf16 differs by 2.1% of its largest logit between the two, where the compact forward is
1.3-2.0% from the float32 result and transformers' own 2.5-3.9%. An architecture this forward does not implement
differs by the logits' own order; a float32 engine is held to 1e-4."""
PACKED_DTYPES = (torch.bfloat16,)
"""Weight dtypes whose products run on weights repacked in oneDNN's own layout (``_pack``; the path torch's compiler
takes on a CPU): in bfloat16 it gives the bits of ``F.linear`` (the same oneDNN kernel, its weights laid out once
instead of at every call) and runs 1.4-1.7x faster at 1-8 rows (a 3072 x 576 weight: 109-209 us against 177-291 us;
SmolLM2's head at 8 rows 2.5 ms against 3.7 ms). Float32 is not among them: there it rounds differently from
``F.linear`` and is slower at 1 row, so it is used only where ``PACK_STREAMED_FLOAT32`` says."""
PACK_STREAMED_FLOAT32 = True
"""Float32 weights of a model whose weights are streamed (``STREAMED_WEIGHT_BYTES``) also get packed copies, used by
decode steps of 2 rows or more (SmolLM2-135M, key span 400: 8 rows 48.5 ms a step against 66.8 ms as W·hᵀ, 2 rows
33.5 against 55.5 ms; 1 row 31.6 against 26.6 ms, so one row stays W·hᵀ). Rounded differently from ``F.linear``,
like W·hᵀ, within the agreement tolerance; prefill keeps ``F.linear``. The cost: a second float32 copy of the
weights (538 MB for SmolLM2)."""
PACK_ROWS = 8
"""The row count oneDNN is told to lay packed weights out for (a decode step's rows; any count runs)."""
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
"""Rotary variants whose cos/sin depend on the position alone (a table is exact); "dynamic" ones grow with the
sequence."""


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """qkv, o, gate_up and down in oneDNN's layout (``PACKED_DTYPES``), rebuilt by ``CompactForward.refresh``."""


class CompactForward:
    """``forward(ids, positions) -> logits`` of the last token of each row, over the engine's cache and plan."""

    def __init__(self, model: torch.nn.Module, plan: AttentionPlan, max_len: int, pack: bool = True) -> None:
        """``pack``: allow packed weight copies (``PACKED_DTYPES``, ``PACK_STREAMED_FLOAT32``); False: no copy."""
        config, decoder = model.config, model.model
        self.plan = plan
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.q_heads
        self.scale = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.intermediate = config.intermediate_size
        self.embed = decoder.embed_tokens.weight
        self.final_norm = decoder.norm.weight
        self.head = model.lm_head.weight
        self.layers = [_fused_layer(layer) for layer in decoder.layers]
        weights = [w for layer in self.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        self.streamed = bool(weights) and min(_nbytes(w) for w in weights) >= STREAMED_WEIGHT_BYTES
        """Decode products as W·hᵀ (``STREAMED_WEIGHT_BYTES``)."""
        self.streamed_head = _nbytes(self.head) >= STREAMED_WEIGHT_BYTES
        """The LM head as W·hᵀ (every call takes it on one row per sequence)."""
        dtype = self.embed.dtype
        packable = dtype in PACKED_DTYPES or (dtype == torch.float32 and self.streamed and PACK_STREAMED_FLOAT32)
        self.packed = pack and packable and self.embed.device.type == "cpu" and _can_pack(dtype)
        """Products on copies of the weights in oneDNN's layout: every one in ``PACKED_DTYPES``; in float32 (weights
        streamed, ``PACK_STREAMED_FLOAT32``) those of decode steps of at least 2 rows."""
        self.packed_head: torch.Tensor | None = None
        self.refresh()
        table = torch.arange(max_len, device=self.embed.device)[None]
        with torch.no_grad():
            cos, sin = decoder.rotary_emb(self.embed[:1][None], table)  # [1, max_len, D], in the model's dtype
        half = self.head_dim // 2
        self.cos = cos[0]
        # rotate_half(x) * sin == cat(x2, x1) * cat(-sin1, sin2): the sign goes into the table, once
        self.signed_sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

    @torch.no_grad()
    def refresh(self) -> None:
        """Lay the weights out again for the packed products (the engine calls it after each weight sync: the
        packed copies do not follow the model's parameters as the fused tensors do): 0.06-0.08 s for SmolLM2, whose
        whole weight sync in bf16 takes 0.17 s."""
        if not self.packed:
            return
        for layer in self.layers:
            layer.packed = (_pack(layer.qkv), _pack(layer.o), _pack(layer.gate_up), _pack(layer.down))
        self.packed_head = _pack(self.head)

    @classmethod
    def of(cls, model: torch.nn.Module, plan: AttentionPlan, max_len: int, pack: bool = True) -> CompactForward | None:
        """The compact forward of ``model`` if its architecture is one this implements and both forwards agree on a
        short input; else None (the caller runs the model's own forward)."""
        if not supported(model.config, model):
            return None
        compact = cls(model, plan, max_len, pack)
        return compact if compact.agrees_with(model) else None

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [R, V] of the last of each row's ``ids`` [R, n] at ``positions`` [R, n]; the keys/values of every
        token are written where ``plan`` says and attention reads as ``plan`` says."""
        rows, n = ids.shape
        qh, kvh, dim, half = self.q_heads, self.kv_heads, self.head_dim, self.head_dim // 2
        x = F.embedding(ids, self.embed).view(rows * n, -1)
        packed_now = self.packed and (self.embed.dtype != torch.float32 or (n == 1 and rows >= 2))
        by_weight = n == 1 and self.streamed and not packed_now
        cos = self.cos[positions].view(rows * n, 1, dim)
        sin = self.signed_sin[positions].view(rows * n, 1, dim)
        for index, layer in enumerate(self.layers):
            packed = layer.packed if packed_now else (None, None, None, None)
            h = F.rms_norm(x, (x.shape[-1],), layer.input_norm, self.eps)
            # [R * n, (Hq + 2 Hkv) * D]: q | k | v of each token
            qkv = _linear(h, layer.qkv, layer.qkv_bias, by_weight, packed[0])
            qk = qkv[:, : (qh + kvh) * dim].view(rows * n, qh + kvh, dim)
            rotated = torch.cat([qk[..., half:], qk[..., :half]], dim=-1)
            qk = qk * cos + rotated * sin
            write_kv(self.plan, index, qk[:, qh:], qkv[:, (qh + kvh) * dim :].view(rows * n, kvh, dim))
            if n == 1:
                query = qk[:, :qh].view(rows, kvh, qh // kvh, dim)
                attended = decode_attention(self.plan, index, query, self.scale)
            else:
                query = qk[:, :qh].view(rows, n, qh, dim).transpose(1, 2)
                attended = prefill_attention(self.plan, index, query, self.scale).transpose(1, 2)
            x = x + _linear(attended.reshape(rows * n, qh * dim), layer.o, None, by_weight, packed[1])
            h = F.rms_norm(x, (x.shape[-1],), layer.post_norm, self.eps)
            gate_up = _linear(h, layer.gate_up, None, by_weight, packed[2])
            activated = F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
            x = x + _linear(activated, layer.down, None, by_weight, packed[3])
        # As transformers does it (norm of every position, head on the last as a strided [R, 1, H] view): the same
        # operations on the same layouts round the same, so both paths sample the same tokens.
        hidden = F.rms_norm(x, (x.shape[-1],), self.final_norm, self.eps).view(rows, n, -1)[:, -1:]
        if packed_now:
            return _linear(hidden[:, -1], self.head, None, False, self.packed_head)
        if self.streamed_head:
            return _linear(hidden[:, -1], self.head, None, True)
        if self.head.shape[0] <= HEAD_BLOCK:
            return F.linear(hidden, self.head)[:, -1]
        return torch.cat([F.linear(hidden, part) for part in self.head.split(HEAD_BLOCK)], dim=-1)[:, -1]

    @torch.no_grad()
    def agrees_with(self, model: torch.nn.Module) -> bool:
        """Whether this and the model's own forward give the same last-token logits on a short input (two rows, a
        prefill of 5 tokens into slots 0-1, then one decode token each); float32 within 1e-4 of the logits'
        scale, lower precisions within ``LOW_PRECISION_AGREEMENT``."""
        plan, device = self.plan, self.embed.device
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.embed.shape[0], (2, 6), generator=generator).to(device)
        positions = torch.arange(6, device=device).expand(2, 6)
        saved = (plan.write_slot, plan.write_pos, plan.mask, plan.kv_len, plan.read_slots)
        outputs = []
        try:
            for forward in (self, transformers_forward(model)):
                for cols in (slice(0, 5), slice(5, 6)):
                    span = cols.stop
                    pos = positions[:, cols]
                    plan.write_slot = torch.arange(2, device=device).repeat_interleave(pos.shape[1])
                    plan.write_pos = pos.reshape(-1)
                    plan.mask = (torch.arange(span, device=device)[None, None] <= pos[:, :, None]).unsqueeze(1)
                    plan.kv_len, plan.read_slots = span, slice(0, 2)
                    outputs.append(forward(ids[:, cols], pos).float())
        finally:
            plan.write_slot, plan.write_pos, plan.mask, plan.kv_len, plan.read_slots = saved
        ours, theirs = torch.stack(outputs[:2]), torch.stack(outputs[2:])
        relative = 1e-4 if self.embed.dtype == torch.float32 else LOW_PRECISION_AGREEMENT
        tolerance = relative * (1 + theirs.abs().max().item())
        return bool((ours - theirs).abs().max().item() <= tolerance)


def _linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    by_weight: bool,
    packed: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` [rows, in]; ``packed``: on ``weight`` in oneDNN's layout
    (``PACKED_DTYPES``); ``by_weight``: computed as W·xᵀ (``STREAMED_WEIGHT_BYTES``) and copied back to [rows, out]
    rows (a few rows: a small copy; SDPA's fast CPU kernel wants rows contiguous)."""
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    if not by_weight:
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.mm(weight, x.t()).t().contiguous()
    return torch.addmm(bias[:, None], weight, x.t()).t().contiguous()


@functools.cache
def _can_pack(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed linear runs here in ``dtype``: a torch built with it (the operators are internal
    ones) on a CPU whose instructions it supports (bf16 packing refuses CPUs without AVX512-BW/VL/DQ or
    AVX-NE-CONVERT; then the plain products run)."""
    ops = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available():
        return False
    if not all(hasattr(ops, name) for name in ("_reorder_linear_weight", "_linear_pointwise")):
        return False
    try:
        weight = ops._reorder_linear_weight(torch.ones(16, 16, dtype=dtype), PACK_ROWS)
        ops._linear_pointwise(torch.ones(2, 16, dtype=dtype), weight, None, "none", [], "")
    except RuntimeError:
        return False
    return True


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [out, in] laid out by oneDNN for products with ``PACK_ROWS`` rows (a copy in its own format)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def supported(config: Any, model: torch.nn.Module) -> bool:
    """Whether ``model``'s layers are the computation ``CompactForward`` implements (by its config and modules)."""
    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if config.model_type not in COMPACT_MODEL_TYPES or not layers or getattr(config, "hidden_act", "") != "silu":
        return False
    rope = getattr(getattr(decoder, "rotary_emb", None), "rope_type", None)
    if rope not in STATIC_ROPE_TYPES or getattr(config, "mlp_bias", False):
        return False
    attention = layers[0].self_attn
    parts = ("q_proj", "k_proj", "v_proj", "o_proj")
    if not all(hasattr(attention, p) for p in parts) or attention.o_proj.bias is not None:
        return False
    if len({attention.q_proj.bias is None, attention.k_proj.bias is None, attention.v_proj.bias is None}) > 1:
        return False
    # No extra norms (Qwen3's q/k norms), sliding windows or soft-capping: those are other computations.
    extra = {"q_norm", "k_norm"} & set(dict(attention.named_children()))
    return not extra and not getattr(config, "final_logit_softcapping", None)


def _fused_layer(layer: torch.nn.Module) -> _Layer:
    attention, mlp = layer.self_attn, layer.mlp
    qkv = _fuse([attention.q_proj, attention.k_proj, attention.v_proj], "weight")
    bias = (
        _fuse([attention.q_proj, attention.k_proj, attention.v_proj], "bias")
        if attention.q_proj.bias is not None
        else None
    )
    gate_up = _fuse([mlp.gate_proj, mlp.up_proj], "weight")
    return _Layer(
        layer.input_layernorm.weight, qkv, bias, attention.o_proj.weight,
        layer.post_attention_layernorm.weight, gate_up, mlp.down_proj.weight,
    )  # fmt: skip


def _fuse(linears: list[torch.nn.Module], name: str) -> torch.Tensor:
    """One tensor holding the linears' ``name`` parameters stacked on dim 0; each linear's parameter becomes a view of
    it (same values), so whatever later fills the parameters fills the fused tensor."""
    fused = torch.cat([getattr(linear, name).detach() for linear in linears])
    offset = 0
    for linear in linears:
        size = getattr(linear, name).shape[0]
        setattr(linear, name, torch.nn.Parameter(fused[offset : offset + size], requires_grad=False))
        offset += size
    return fused


def transformers_forward(model: torch.nn.Module) -> Any:
    """``forward(ids, positions) -> logits`` of the last token of each row, by the model's own modeling code (with
    the engine's attention function, which reads the plan set on its attention modules)."""

    def forward(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=1).logits[:, -1]

    return forward
