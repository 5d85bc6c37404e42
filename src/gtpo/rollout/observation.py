"""How an environment's observation becomes the tokens between two model turns (never trained on).

Two ways, by the environment's ``observation_role``:

- "inline": the observation text continues the model's own message (the TIR protocol's ```` ```output ```` block
  after a ```` ```python ```` block). Its tokens are the text's, tokenized on its own.
- "user" / "tool": the observation is a new chat message of that role, rendered by the model's own chat template.
  The tokens between the model's turns are exactly what the template puts there: the end of the assistant's
  message (unless the model already sampled that end-of-message token), the new message, and the header of the
  next assistant message. They are found once per tokenizer by rendering a conversation with marker strings in
  place of the assistant's text and of the observation, and cutting the text around the markers.

Never re-tokenized: the model's sampled tokens stay as sampled, and a conversation is never rendered again as a
whole (that can tokenize the model's text differently from how it was sampled, or change earlier messages: some
templates drop past reasoning). So the tokens the trainer scores are the tokens the sampler saw.

Observation text is what an environment printed: a ``<|im_end|>`` in it is those characters, not the chat's
control token (``split_special_tokens``); only the template's own text is read with its control tokens.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from gtpo.generation.stop import eos_token_ids

_ASSISTANT_MARK = "\x07gtpo-assistant-turn\x07"
_OBSERVATION_MARK = "\x07gtpo-observation\x07"


class TemplateError(ValueError):
    """The tokenizer's chat template cannot render an observation message (no template, or no such role)."""


class ObservationTokens:
    """Observation text -> tokens, for one tokenizer and one ``observation_role``."""

    def __init__(self, tokenizer: Any, role: str) -> None:
        if role not in ("inline", "user", "tool"):
            raise ValueError(f"observation role must be 'inline', 'user' or 'tool', got {role!r}")
        self.tokenizer = tokenizer
        self.role = role
        self.eos_ids = eos_token_ids(tokenizer)
        if role != "inline":
            _ = self.pieces  # a template that cannot render the role fails here, before any generation

    @cached_property
    def pieces(self) -> tuple[str, str]:
        """(head, tail): the template's text between the end of the assistant's content and the observation, and
        from the observation to the start of the next assistant message's content."""
        messages = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": _ASSISTANT_MARK},
            {"role": self.role, "content": _OBSERVATION_MARK},
        ]
        if not getattr(self.tokenizer, "chat_template", None):
            raise TemplateError(
                f"observations as {self.role!r} messages need the tokenizer's chat template, and this one has none; "
                "use an environment with inline observations or a model with a chat template"
            )
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # the template's own error (e.g. an unknown role) names what it refused
            raise TemplateError(f"the chat template cannot render a {self.role!r} message: {err}") from None
        if text.count(_ASSISTANT_MARK) != 1 or text.count(_OBSERVATION_MARK) != 1:
            raise TemplateError(
                f"the chat template does not render a {self.role!r} message after an assistant message verbatim; "
                "choose another observation role (user or tool) for this model"
            )
        after = text.split(_ASSISTANT_MARK, 1)[1]
        head, tail = after.split(_OBSERVATION_MARK, 1)
        return head, tail

    def __call__(self, observation: str, last_model_token: int | None) -> list[int]:
        """The tokens to append after a model turn whose last sampled token is ``last_model_token``."""
        text = self._encode_text(observation)
        if self.role == "inline":
            return text
        head, tail = self.pieces
        if last_model_token is not None and last_model_token in self.eos_ids:
            # The model closed its message itself: that token is (normally) the template's end-of-message text,
            # which must not appear twice.
            sampled_end = self.tokenizer.decode([last_model_token], skip_special_tokens=False)
            if sampled_end and head.startswith(sampled_end):
                head = head[len(sampled_end) :]
        return self._encode_template(head) + text + self._encode_template(tail)

    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def _encode_template(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []
