"""Shared fixtures: a locally built tokenizer with a chat template and a tiny random Qwen2 model; a scripted sampler.

Nothing downloads: the tokenizer is trained here on a few lines of TIR text, the model is built from a config.
"""

from __future__ import annotations

import os

# One intra-op thread for torch here and in the processes tests start (they inherit the environment). The
# tests' models are tiny; on a shared 2-core machine two busy-waiting OpenMP threads per process made a tiny
# update 9x slower (10.8 s vs 1.2 s at load average 11).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from gtpo.generation.protocol import Sample, SampleFinish
from gtpo.tools import has_closed_code_block

torch.set_num_threads(1)  # in case torch was imported before the variable was set

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Compute 12345 * 6789.\n```python\nx = 12345 * 6789\nprint(x)\n```\n```output\n83810205\n```\n",
    "The answer is \\boxed{83810205}. NameError: name 'y' is not defined Traceback",
    "system user assistant Solve the problem step by step with python code.",
    "0123456789 + - * / % ( ) = [ ] { } , . : ; ' \" # ! ? < > _ abcdefghijklmnopqrstuvwxyz",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config).eval()


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
        stop_at_code_block: bool = True,
    ) -> list[Sample]:
        samples = []
        for context, cap in zip(contexts, max_new_tokens, strict=True):
            text = self.tokenizer.decode(list(context))
            reply = self.respond(text, text.count("```output"))
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            finish: SampleFinish = "stop" if stop_at_code_block and has_closed_code_block(reply) else "eos"
            if finish == "eos":
                ids = [*ids, self.tokenizer.eos_token_id]
            if len(ids) > cap:
                ids, finish = ids[:cap], "length"
            samples.append(Sample(ids, [0.0] * len(ids), finish))
        return samples


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return build_model(tiny_tokenizer)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_model):
    """The random tiny model and its tokenizer saved as a model folder, for code that loads one by path."""
    path = tmp_path_factory.mktemp("model")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def shipped_tiny():
    """The shipped tiny model and tokenizer: a policy that calls the tool and earns mixed rewards on arith."""
    from gtpo.model.policy import load_policy
    from gtpo.tiny import DEFAULT_MODEL_DIR

    model, tokenizer = load_policy(str(DEFAULT_MODEL_DIR))
    return model.eval(), tokenizer


QUICK_TRAIN_FLAGS = [
    "--device",
    "cpu",
    "--no-progress",
    "--export",
    "none",
    "--eval-every",
    "0",
    "--rollout.group-size",
    "2",
    "--rollout.problems-per-step",
    "1",
    "--rollout.max-turns",
    "2",
    "--rollout.max-new-tokens-per-turn",
    "32",
    "--sandbox.workers",
    "1",
]
"""`gtpo train` flags for a run of the shipped tiny model that takes seconds a step."""


def run_gtpo(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``gtpo ARGV`` in-process: (exit code, stdout, stderr). An exception escaping main fails the test."""
    from gtpo import cli

    code = 0
    try:
        cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
