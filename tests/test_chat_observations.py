"""Observations as chat messages: exact token bookkeeping with the real chat templates.

The contract (``gtpo.rollout.observation``): the tokens between two model turns are exactly the template's (the
end of the assistant's message unless the model sampled it, the observation's message, the next assistant
header), never trained on; the model's own tokens stay as sampled; so decoding a trajectory gives the template's
rendering of the conversation, while its ids are what the sampler saw, not what re-tokenizing that rendering
gives. Checked on the shipped tiny model's template and the two real ones ``gtpo prepare`` builds (SmolLM2-135M-
Instruct's and Qwen2.5's, whose "tool" role is a user message wrapping <tool_response> tags), for both roles.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_real_tokenizers import (
    REAL,
    ScriptedPolicy,
    encode,
    random_model,
    real_tokenizer,
    trainer_logprobs,
    vocab_size,
)

from gtpo.generation.hf import HFSampler
from gtpo.model.policy import prompt_ids
from gtpo.rollout.episode import rollout
from gtpo.rollout.observation import ObservationTokens, TemplateError
from gtpo.rollout.spec import EpisodeSpec
from gtpo.types import Problem

SYSTEM = "You play a game."
QUESTION = "Pick a number from 1 to 10."
TURNS = ["I pick \\boxed{5}.", "Then \\boxed{8}!", "So it is \\boxed{7}."]
OBSERVATIONS = ["Higher than 5.\nEnter your next guess.", "Lower: <|im_end|> is not the end `x`\n  é中🙂"]


@pytest.fixture(scope="module", params=("tiny", *REAL))
def tokenizer(request):
    if request.param == "tiny":
        from transformers import AutoTokenizer

        from gtpo.tiny import DEFAULT_MODEL_DIR

        return AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    return real_tokenizer(request.param)


def end_of_message(tokenizer) -> int:
    """The token that ends a chat message in all three templates."""
    return tokenizer.convert_tokens_to_ids("<|im_end|>")


def messages(role: str, turns: int) -> list[dict[str, str]]:
    out = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    for k in range(turns):
        out.append({"role": "assistant", "content": TURNS[k]})
        if k < turns - 1:
            out.append({"role": role, "content": OBSERVATIONS[k]})
    return out


def conversation_ids(tokenizer, role: str, sampled: list[list[int]]) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of the prompt, the sampled turns (each ended by the model with its end-of-message
    token) and the observations between them, as the rollout appends them."""
    render = ObservationTokens(tokenizer, role)
    ids = prompt_ids(tokenizer, SYSTEM, QUESTION)
    mask = [0] * len(ids)
    for k, turn in enumerate(sampled):
        turn = [*turn, end_of_message(tokenizer)]
        ids, mask = ids + turn, mask + [1] * len(turn)
        if k < len(sampled) - 1:
            observation = render(OBSERVATIONS[k], turn[-1])
            ids, mask = ids + observation, mask + [0] * len(observation)
    return ids, mask


@pytest.mark.parametrize("role", ["user", "tool"])
def test_the_tokens_decode_to_the_templates_rendering_of_the_conversation(tokenizer, role):
    sampled = [encode(tokenizer, text) for text in TURNS]
    ids, mask = conversation_ids(tokenizer, role, sampled)
    rendered = tokenizer.apply_chat_template(messages(role, len(TURNS)), tokenize=False)
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
    # The rendering ends the last message with the template's newline, which the model does not sample.
    assert rendered.startswith(decoded) and rendered[len(decoded) :].strip() == ""
    # Trained exactly on the sampled tokens: the end-of-message token the model sampled is its own, the one
    # the template adds after a turn is not, and a printed "<|im_end|>" is text, not the control token.
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert trained == [t for turn in sampled for t in [*turn, end_of_message(tokenizer)]]
    after_prompt = ids[len(prompt_ids(tokenizer, SYSTEM, QUESTION)) :]
    # The model's three, and the one closing each observation's message; the printed one stayed text.
    assert after_prompt.count(end_of_message(tokenizer)) == len(TURNS) + len(OBSERVATIONS)


@pytest.mark.parametrize("role", ["user", "tool"])
def test_sampled_tokens_are_kept_where_a_re_render_would_tokenize_differently(tokenizer, role):
    """The model spelled its turns one character per token, as a sampler may: a naive implementation that
    renders the conversation again and tokenizes it gets other ids, and would score tokens nobody sampled."""
    sampled = [[i for char in text for i in encode(tokenizer, char)] for text in TURNS]
    ours, _ = conversation_ids(tokenizer, role, sampled)
    naive = list(tokenizer.apply_chat_template(messages(role, len(TURNS)), tokenize=True, return_dict=False))
    naive = naive[: len(naive) - (len(naive) and tokenizer.decode(naive[-1:]).strip() == "")]  # drop the last "\n"
    assert tokenizer.decode(ours) == tokenizer.decode(naive)  # the same conversation ...
    assert ours != naive  # ... but not the same tokens: the naive re-render fails here
    start = len(prompt_ids(tokenizer, SYSTEM, QUESTION))
    assert ours[start : start + len(sampled[0])] == sampled[0]


def test_a_turn_stopped_at_a_code_block_gets_the_end_of_message_from_the_template(tokenizer):
    """A chat environment with tool calls: the turn stopped at its closing fence, so the template's end of the
    assistant message is an observation token (not trained on), then the tool's message."""
    render = ObservationTokens(tokenizer, "tool")
    turn = encode(tokenizer, "Let me run it.\n```python\nprint(6 * 7)\n```")
    observation = render("42\n", turn[-1])
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": tokenizer.decode(turn)},
            {"role": "tool", "content": "42\n"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = prompt_ids(tokenizer, SYSTEM, QUESTION) + turn + observation
    assert tokenizer.decode(ids, skip_special_tokens=False) == rendered
    assert observation[0] == end_of_message(tokenizer)


def test_a_template_that_cannot_render_the_role_is_refused_before_generating(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="need the tokenizer's chat template"):
        ObservationTokens(tokenizer, "user")


class Echo:
    """Two steps, each observation a text that merges with the template around it if tokenized as a whole."""

    def reset(self, seed=None):
        self.turn = 0
        return QUESTION

    def step(self, action):
        self.turn += 1
        return OBSERVATIONS[self.turn - 1], float(self.turn), self.turn == 2, False, {}


@pytest.mark.parametrize("sampled", ["scripted", "random-model"])
def test_what_the_trainer_scores_is_what_the_sampler_saw(tokenizer, sampled):
    """Through the rollout: HFSampler drives a scripted policy (exact turns) or a random Qwen2 with the real
    vocabulary (free turns); the mask is 1 exactly on sampled tokens and the update's recomputed log-probs
    equal the sampler's."""
    eom = end_of_message(tokenizer)
    if sampled == "scripted":
        texts = iter(TURNS * 4)
        model = ScriptedPolicy(vocab_size(tokenizer), lambda _: [*encode(tokenizer, next(texts)), eom], eom)
    else:
        model = random_model(vocab_size(tokenizer))
    spec = EpisodeSpec(system_prompt=SYSTEM, max_turns=3, max_new_tokens_per_turn=12, max_total_tokens=400)
    problems = [Problem(id=f"g{i}", question="", answer="", seed=i) for i in range(2)]
    result = rollout(problems, 2, HFSampler(model, tokenizer), tokenizer, lambda p: Echo(), spec, seed=3)
    render = ObservationTokens(tokenizer, "user")
    for t in result.trajectories:
        assert len(t.input_ids) == len(t.loss_mask) == len(t.turn_ids) == len(t.sampler_logprobs)
        pos = t.prompt_len
        for k, turn in enumerate(t.turns):
            n = turn.num_model_tokens
            assert t.loss_mask[pos : pos + n] == [1] * n and t.turn_ids[pos : pos + n] == [k] * n
            pos += n
            if k < t.num_turns - 1:
                observation = render(OBSERVATIONS[k], t.input_ids[pos - 1])
                assert t.input_ids[pos : pos + len(observation)] == observation
                assert t.loss_mask[pos : pos + len(observation)] == [0] * len(observation)
                pos += len(observation)
        assert pos == len(t.input_ids)
    if sampled == "random-model":
        recomputed = trainer_logprobs(model, result.trajectories, temperature=1.0)
        for row, t in enumerate(result.trajectories):
            mask = torch.tensor(t.loss_mask, dtype=torch.bool)
            torch.testing.assert_close(
                recomputed[row, : len(t.loss_mask)][mask], torch.tensor(t.sampler_logprobs)[mask], atol=2e-4, rtol=0
            )
