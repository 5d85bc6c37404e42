"""The one turn-stop rule of every backend (``HFSampler``, the engine, ``VLLMSampler``).

A turn ends at an EOS token ("eos"), or at a token that can close a fence once the decoded turn holds a closed
python block ("stop": the environment runs the code). The token cap ("length") is the caller's to check. Only EOS
and fence tokens can end a turn, so the (decoding) closed-block check runs at fence tokens only. Environments whose
turns are whole messages (``stop_at_code_block`` off: games, chat observations) end turns at EOS only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from gtpo.generation.protocol import SampleFinish
from gtpo.tools import has_closed_code_block

END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")
"""Tokens that end a turn besides the tokenizer's own EOS, where its vocabulary has them."""


def eos_token_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's EOS and whichever of ``END_OF_TURN_TOKENS`` it knows."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in END_OF_TURN_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


def fence_token_ids(tokenizer: Any) -> set[int]:
    """Tokens whose text holds a backtick: only these can close a code block, so only they need the (decoding)
    closed-block check of ``turn_end``."""
    return {i for tok, i in tokenizer.get_vocab().items() if "`" in tokenizer.convert_tokens_to_string([tok])}


def turn_end(
    token_ids: Sequence[int], tokenizer: Any, eos_ids: set[int], fence_ids: set[int], code_blocks: bool = True
) -> SampleFinish | None:
    """Whether a turn whose sampled tokens so far are ``token_ids`` ends at its last token, and why (see the
    module docstring); ``code_blocks`` False ends turns at EOS only. Decoding only at fence tokens keeps the check
    off the common path."""
    last = token_ids[-1]
    if last in eos_ids:
        return "eos"
    if (
        code_blocks
        and last in fence_ids
        and has_closed_code_block(tokenizer.decode(list(token_ids), skip_special_tokens=True))
    ):
        return "stop"
    return None


@dataclass(frozen=True)
class TurnStop:
    """The rule bound to one tokenizer: its EOS and fence token ids, computed once."""

    tokenizer: Any
    eos_ids: set[int]
    fence_ids: set[int]

    @classmethod
    def of(cls, tokenizer: Any) -> TurnStop:
        return cls(tokenizer, eos_token_ids(tokenizer), fence_token_ids(tokenizer))

    @cached_property
    def stop_ids(self) -> list[int]:
        """The tokens at which a turn can end (EOS and fence tokens), sorted; at any other token it goes on."""
        return sorted(self.eos_ids | self.fence_ids)

    def ends(self, token_ids: Sequence[int], code_blocks: bool = True) -> SampleFinish | None:
        """``turn_end`` of ``token_ids``, the turn's sampled tokens so far."""
        return turn_end(token_ids, self.tokenizer, self.eos_ids, self.fence_ids, code_blocks)
