"""Real model shapes with random weights, for the speed benchmarks (GPU machines here have no network).

Random weights measure speed, never quality. The shipped tiny tokenizer is saved beside the model so that
code which loads a model directory (the trainer) loads this one like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from gtpo.tiny import DEFAULT_MODEL_DIR

ARCHITECTURES: dict[str, dict] = {
    # Qwen2.5-1.5B / Qwen2.5-Math-1.5B (config.json of the released checkpoints).
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1e6,
        max_position_embeddings=32768,
    ),
    # Qwen2.5-7B / Qwen2.5-Math-7B.
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
        rope_theta=1e6,
        max_position_embeddings=32768,
    ),
    # The same layer types, small enough to check a script on a CPU in seconds.
    "small": dict(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1e6,
        max_position_embeddings=4096,
    ),
}


def random_model(arch: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """A Qwen2 model of the named shape with random weights, in eval mode."""
    torch.manual_seed(0)
    config = Qwen2Config(**ARCHITECTURES[arch], eos_token_id=2, pad_token_id=0, bos_token_id=None)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    return model.eval()


def tiny_tokenizer():
    """The shipped tiny tokenizer (its ids index the first rows of any vocabulary above)."""
    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))


def save_with_tokenizer(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
