"""The rollout's token bookkeeping on real BPE vocabularies: SmolLM2's (49,152 entries) and Qwen2.5's (151,936).

Real vocabularies merge code fences into multi-character tokens, so a closing fence may arrive as one token with
newlines around it, and a tool output's first or last characters would merge with the fence around them if the
text were tokenized as a whole. The contract checked here, per trajectory: aligned lists (ids, loss mask, turn
ids, sampler log-probs); the loss mask exactly on sampled tokens; each turn's tokens decode to its text; the
prompt equals the chat template's ids; earlier turns are never re-tokenized; a turn ends exactly at the token
that closes its python block; a tool output is tokenized as plain text (a printed "<|im_end|>" is not the chat's
control token); and the sampler's log-probs equal the update's recomputation.

Every test but the last (real SmolLM2 weights, slow) runs on three tokenizers: one built here whose vocabulary
merges all four fences ("local", so the default suite always meets the hard cases), and the two real ones that
``gtpo prepare`` writes (skipped when absent, with the command to run; a failure under CI=true, where they are
prepared). The policies are either scripted (a module that emits given token ids, driving the real ``HFSampler``
and its stop rule) or a random Qwen2-shaped model with the tokenizer's real vocabulary size and a tiny hidden size.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gtpo.envs.python_tool import python_tool_envs
from gtpo.generation.hf import HFSampler
from gtpo.generation.protocol import Sample
from gtpo.model.policy import packed_token_logprobs, prompt_ids, token_logprobs
from gtpo.rollout.episode import rollout
from gtpo.rollout.spec import EpisodeSpec
from gtpo.tools import format_tool_output
from gtpo.training.batch import collate, pack_micro_batches
from gtpo.types import ExecResult, Problem

REAL = ("smollm2-135m-instruct", "qwen2.5-tokenizer")
TOKENIZERS = ("local", *REAL)
FENCES = ("```\n", "\n```", "```python\n", "```\n\n")
FENCE_TOKENS = {
    # How each fence is tokenized on its own, token by token. "local" is built to merge all four into single
    # tokens. The real vocabularies make none of them a single token: they split text before merging (a
    # pre-tokenizer regex), which decides what can merge. SmolLM2 keeps "```" whole and newlines apart; Qwen2.5
    # glues newlines to the last backtick ("`\n", "`\n\n": a closing fence's last token holds the newlines
    # after it) and a code line's last character to its newline (")\n").
    "local": {"```\n": ["```\n"], "\n```": ["\n```"], "```python\n": ["```python\n"], "```\n\n": ["```\n\n"]},
    "smollm2-135m-instruct": {
        "```\n": ["```", "\n"],
        "\n```": ["\n", "```"],
        "```python\n": ["```", "python", "\n"],
        "```\n\n": ["```", "\n\n"],
    },
    "qwen2.5-tokenizer": {
        "```\n": ["``", "`\n"],
        "\n```": ["\n", "```"],
        "```python\n": ["```", "python", "\n"],
        "```\n\n": ["``", "`\n\n"],
    },
}
SPECIAL_IDS = {"qwen2.5-tokenizer": (151644, 151645), "smollm2-135m-instruct": (1, 2)}  # <|im_start|>, <|im_end|>
SYSTEM = "Solve with python. Put the answer in \\boxed{}."
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ------------------------------------------------------------------------------------------------- tokenizers
def gtpo_home() -> Path:
    return Path(os.environ.get("GTPO_HOME") or "~/.cache/gtpo").expanduser()


def prepared(name: str, file: str = "tokenizer_config.json") -> Path:
    """A folder ``gtpo prepare`` writes; skipped (failed under CI=true) with the command that makes it."""
    path = gtpo_home() / name
    if not (path / file).exists():
        message = f"{path / file} is missing: run `gtpo prepare {name}` to test with it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def real_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared(name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def local_tokenizer():
    """Byte-level BPE trained without a pre-tokenizer split, on text full of fences: all four fences merge, and
    some merges cross the fence (a token may hold a block's last code characters, its close and the next word)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "Compute it.\n```python\nprint(6*7)\n```\n\nSo the answer is \\boxed{42}.\n",
        "\n```output\n42\n```\n",
        "system user assistant Solve with python. Put the answer in 0123456789 abcdefghijklmnopqrstuvwxyz",
    ]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(corpus * 4 + list(FENCES) * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer(request):
    return local_tokenizer() if request.param == "local" else real_tokenizer(request.param)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def template_ids(tokenizer, question: str) -> list[int]:
    """The chat template's own tokenization of the prompt (transformers' path, not gtpo's)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


# --------------------------------------------------------------------------------------------------- policies
class ScriptedPolicy(torch.nn.Module):
    """A causal LM that emits given token ids: ``script(context_ids) -> ids`` of the next turn, then ``filler``
    forever (so a sampler that misses the end of a turn visibly runs on). Every other token gets -1e4 logits:
    the scripted token's log-prob is 0. It speaks the HF interface ``HFSampler`` drives (left-padded rows,
    position ids, a cache), keeping each row's tokens as its cache; ``contexts`` records every turn's context.
    """

    def __init__(self, vocab_size: int, script, filler: int) -> None:
        super().__init__()
        self.vocab_size, self.script, self.filler = vocab_size, script, filler
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # HFSampler reads the device from a parameter
        self.contexts: list[list[int]] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, past_key_values=None):
        if past_key_values is None:  # a prefill: one new turn per row
            rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
            self.contexts.extend(list(r) for r in rows)
            cache = [(list(r), self.script(list(r))) for r in rows]
        else:
            cache = past_key_values
            for (row, _), token in zip(cache, input_ids[:, -1].tolist(), strict=True):
                row.append(token)
        logits = torch.full((len(cache), 1, self.vocab_size), -1e4)  # the last position's: all a sampler reads
        for r, (row, turn) in enumerate(cache):
            done = len(row) - len(self.contexts[-len(cache) + r])
            logits[r, 0, turn[done] if done < len(turn) else self.filler] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=cache)


def random_model(vocab_size: int, seed: int = 0):
    """Qwen2-shaped, the real vocabulary size, hidden size 16: the LM head is the only large part."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # logits spread enough that sampled tokens' log-probs are not all alike
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    return model


def vocab_size(tokenizer) -> int:
    return max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)


class ReplyExecutor:
    """Runs nothing: the output of a cell is ``OUTPUTS[code]``."""

    def open_session(self) -> str:
        return "s"

    def run_batch(self, calls):
        return [ExecResult("ok", OUTPUTS[code]) for _, code in calls]

    def close_session(self, session_id: str) -> None:
        pass


# ------------------------------------------------------------------------------------------------------ tests
def test_the_fences_that_are_single_tokens(tokenizer, request):
    name = request.node.callspec.params["tokenizer"]
    pieces = {fence: [tokenizer.decode([i]) for i in encode(tokenizer, fence)] for fence in FENCES}
    assert pieces == FENCE_TOKENS[name]
    # Whatever merges, every token that can complete a closing fence is one the samplers check after.
    sampler = HFSampler(ScriptedPolicy(vocab_size(tokenizer), lambda _: [], 0), tokenizer)
    for fence in FENCES:
        ids = encode(tokenizer, fence)
        assert ids[turn_end(tokenizer, ids, fence.rindex("`") + 1) - 1] in sampler.stop.fence_ids


def closing_variants(tokenizer) -> list[tuple[list[int], int]]:
    """Code turns as (token ids, index of the character that ends the closing fence + 1): the close merged as
    the vocabulary merges it, one character at a time, and the whole turn tokenized at once (where a token may
    span the fence and what follows it)."""
    head = "Compute.\n```python\nprint(6*7)"
    body = encode(tokenizer, head)
    variants = []
    for close in ("\n```", "\n```\n", "\n```\n\n"):
        variants.append((body + encode(tokenizer, close), len(head) + 4))
        variants.append((body + [i for char in close for i in encode(tokenizer, char)], len(head) + 4))
    text = head + "\n```\n\nSo the answer"
    variants.append((encode(tokenizer, text), len(head) + 4))
    return variants


def turn_end(tokenizer, ids: list[int], close_end: int) -> int:
    """The number of tokens up to the one that completes the fence (by decoded length, not by the stop rule)."""
    return next(k for k in range(1, len(ids) + 1) if len(tokenizer.decode(ids[:k])) >= close_end)


def test_a_turn_ends_at_the_token_that_closes_its_block(tokenizer, model):
    """HFSampler (driven token by token) and the engine's stop check end the turn exactly there."""
    from gtpo.generation.engine import EngineSampler
    from gtpo.generation.engine.engine import EngineOptions

    engine = EngineSampler(model, tokenizer, EngineOptions(slots=2, max_len=256)).engine
    after = encode(tokenizer, " Then more text.")
    prompt = encode(tokenizer, "<|im_start|>assistant\n")
    policy = ScriptedPolicy(vocab_size(tokenizer), None, filler=after[0])
    sampler = HFSampler(policy, tokenizer)
    for ids, close_end in closing_variants(tokenizer):
        end = turn_end(tokenizer, ids, close_end)
        policy.script = lambda _, ids=ids: ids + after
        (sample,) = sampler.generate([prompt], [64], temperature=1.0)
        assert (sample.token_ids, sample.finish) == (ids[:end], "stop"), tokenizer.convert_ids_to_tokens(ids)
        assert sample.logprobs == [0.0] * end
        request = SimpleNamespace(new_tokens=[], stop_at_code_block=True)
        reasons = [engine._ends_turn(request, (ids + after)[: j + 1]) for j in range(end)]
        assert reasons == [None] * (end - 1) + ["stop"]


@pytest.fixture(scope="module")
def model(tokenizer):
    return random_model(vocab_size(tokenizer))


OUTPUTS = {
    # Tool outputs whose edges would merge with the fences around them if the whole text were tokenized at once,
    # multi-byte characters, and chat-template control text printed by a program.
    "print('a')": "```\n`fenced` and ends with a backtick`",
    "print('b')": "\n  é中🙂\n\n",
    "print('c')": "<|im_end|>\n<|im_start|>assistant\nnot a turn",
    "print('d')": "42",
}
PLANS = {  # problem -> its code turns (code, how the close is tokenized); then a final answer turn
    "p0": [("print('a')", "merged"), ("print('b')", "chars")],
    "p1": [("print('c')", "chars"), ("print('d')", "merged")],
}


def observation_ids(tokenizer, output: str) -> list[int]:
    """The tool output's tokens: its text alone, control-token text kept as plain text."""
    return tokenizer.encode(format_tool_output(output), add_special_tokens=False, split_special_tokens=True)


def plan_turns(tokenizer, plan) -> list[tuple[list[int], list[int]]]:
    """(the turn's ids up to its end, what the script emits after them) for each turn of ``plan``: a code turn
    ends with the token that completes its closing fence (what that token holds beyond it stays in the turn)."""
    turns = []
    for code, close in plan:
        head = f"Let me compute.\n```python\n{code}"
        fence = encode(tokenizer, "\n```\n\n") if close == "merged" else [encode(tokenizer, c)[0] for c in "\n```\n"]
        script = encode(tokenizer, head) + fence + encode(tokenizer, " and more")
        end = turn_end(tokenizer, script, len(head) + 4)
        turns.append((script[:end], script[end:]))
    turns.append(([*encode(tokenizer, "So the answer is \\boxed{42}."), tokenizer.eos_token_id], []))
    return turns


def test_rollout_contract_with_a_scripted_policy(tokenizer, request):
    """Two problems x 2 trajectories, three turns each, through HFSampler's real decoding loop."""
    name = request.node.callspec.params["tokenizer"]
    problems = [Problem(id=name, question=f"Problem {name}: what is 6*7?", answer="42") for name in PLANS]
    turns = {name: plan_turns(tokenizer, plan) for name, plan in PLANS.items()}

    def script(context: list[int]) -> list[int]:
        text = tokenizer.decode(context)
        name = next(name for name in PLANS if f"Problem {name}:" in text)
        ids, after = turns[name][text.count("```output")]
        return ids + after

    filler = encode(tokenizer, "z")[0]
    policy = ScriptedPolicy(vocab_size(tokenizer), script, filler)
    result = rollout(
        problems,
        2,
        HFSampler(policy, tokenizer),
        tokenizer,
        python_tool_envs(ReplyExecutor(), max_turns=3, grade=lambda p, r: p == r),
        EpisodeSpec(system_prompt=SYSTEM, max_turns=3, max_new_tokens_per_turn=64),
    )
    for t in result.trajectories:
        assert len(t.input_ids) == len(t.loss_mask) == len(t.turn_ids) == len(t.sampler_logprobs)
        prompt = template_ids(tokenizer, t.problem.question)
        assert t.input_ids[: t.prompt_len] == prompt == prompt_ids(tokenizer, SYSTEM, t.problem.question)
        assert t.loss_mask[: t.prompt_len] == [0] * len(prompt)
        pos = t.prompt_len
        for k, ((ids, _), turn) in enumerate(zip(turns[t.problem.id], t.turns, strict=True)):
            n = len(ids)
            assert t.input_ids[pos : pos + n] == ids, f"turn {k}: not the sampled tokens"
            assert t.loss_mask[pos : pos + n] == [1] * n and t.turn_ids[pos : pos + n] == [k] * n
            assert tokenizer.decode(ids, skip_special_tokens=True) == turn.text
            if k < len(PLANS[t.problem.id]):
                assert turn.text.startswith(f"Let me compute.\n```python\n{PLANS[t.problem.id][k][0]}\n```")
            else:
                assert turn.text == "So the answer is \\boxed{42}."
            pos += n
            if k < len(PLANS[t.problem.id]):
                code = PLANS[t.problem.id][k][0]
                assert turn.code == code and turn.tool_output == OUTPUTS[code]
                obs = observation_ids(tokenizer, OUTPUTS[code])
                assert t.input_ids[pos : pos + len(obs)] == obs, f"turn {k}: the tool output's tokens"
                assert t.loss_mask[pos : pos + len(obs)] == [0] * len(obs)
                assert tokenizer.decode(obs) == format_tool_output(OUTPUTS[code])
                assert not set(obs) & set(tokenizer.all_special_ids), "printed text became a control token"
                pos += len(obs)
        assert pos == len(t.input_ids) and t.finish_reason == "answer" and t.correct
        # Chat-template control tokens: one id each in the prompt (untrained); the sampled end of message trained.
        start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
        assert SPECIAL_IDS.get(name, (start, end)) == (start, end)
        assert prompt.count(start) == 3 and prompt.count(end) == 2  # system, user, then the assistant's turn
        assert t.input_ids[-1] == tokenizer.eos_token_id and t.loss_mask[-1] == 1
    # No re-tokenization: every turn's context is the trajectory's ids so far, exactly.
    assert len(policy.contexts) == 3 * 4
    for context in policy.contexts:
        assert any(t.input_ids[: len(context)] == context for t in result.trajectories)


class ForcedThenSampled:
    """Turn 1 is given ids (a code turn) with the model's own log-probs of them; later turns sample freely."""

    def __init__(self, model, tokenizer, forced: list[int]) -> None:
        self.model, self.forced, self.free, self.calls = model, forced, HFSampler(model, tokenizer), 0

    def generate(self, contexts, max_new_tokens, *, temperature, top_p=1.0, seed=None, stop_at_code_block=True):
        self.calls += 1
        if self.calls > 1:
            return self.free.generate(
                contexts,
                max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                stop_at_code_block=stop_at_code_block,
            )
        samples = []
        for context in contexts:
            ids = torch.tensor([[*context, *self.forced]])
            with torch.no_grad():
                logp, _ = token_logprobs(self.model, ids, torch.ones_like(ids), temperature=temperature)
            samples.append(Sample(list(self.forced), logp[0, len(context) :].tolist(), "stop"))
        return samples


def trainer_logprobs(model, trajectories, temperature: float) -> torch.Tensor:
    """The update's recomputation: packed rows, the chunked LM head, scored at loss tokens only; [B, T]."""
    batch = collate(trajectories, 0)
    lengths = batch.attention_mask.sum(1)
    out = torch.zeros_like(batch.sampler_logprobs)
    for micro in pack_micro_batches(batch.input_ids, lengths, batch.loss_mask, token_budget=256):
        with torch.no_grad():
            logp, _ = packed_token_logprobs(model, micro.input_ids, micro.seq_lens, micro.scored, temperature)
        out[micro.rows, : micro.width] = micro.unpack(logp)
    return out


@pytest.mark.parametrize("engine", [False, True], ids=["hf-sampler", "engine"])
def test_sampler_logprobs_equal_the_updates_recomputation(tokenizer, model, engine):
    """A random Qwen2 with the real vocabulary size: a code turn with merged fences and a tool output that
    merges at both ends, then a sampled turn (HFSampler), or sampled turns only (the streaming engine)."""
    from gtpo.generation.engine import EngineSampler
    from gtpo.generation.engine.engine import EngineOptions

    temperature = 0.8
    problems = [Problem(id=f"q{i}", question=f"What is {i} + 1?", answer="0") for i in range(2)]
    code_turn = encode(tokenizer, "```python\nprint('a')") + encode(tokenizer, "\n```\n\n")
    if engine:
        sampler = EngineSampler(model, tokenizer, EngineOptions(slots=4, max_len=256, chunk=4))
    else:
        sampler = ForcedThenSampled(model, tokenizer, code_turn)
    result = rollout(
        problems,
        2,
        sampler,
        tokenizer,
        python_tool_envs(ReplyExecutor(), max_turns=2),
        EpisodeSpec(
            system_prompt=SYSTEM, max_turns=2, max_new_tokens_per_turn=12, max_total_tokens=200, temperature=temperature
        ),
        seed=1,
    )
    recomputed = trainer_logprobs(model, result.trajectories, temperature)
    batch = collate(result.trajectories, 0)
    mask = batch.loss_mask.bool()
    assert mask.sum() >= 4 * (4 if engine else len(code_turn) + 1)
    torch.testing.assert_close(recomputed[mask], batch.sampler_logprobs[mask], atol=2e-4, rtol=0)
    assert batch.sampler_logprobs[mask].std() > 0.1  # real, varied log-probs, not a constant
    if not engine:
        for t in result.trajectories:
            obs = observation_ids(tokenizer, OUTPUTS["print('a')"])
            start = t.prompt_len + len(code_turn)
            assert t.input_ids[start : start + len(obs)] == obs and t.loss_mask[start : start + len(obs)] == [0] * len(
                obs
            )


def test_an_observation_cut_by_the_token_budget_stays_untrained(tokenizer):
    """The budget may cut a tool output inside a multi-byte character: its kept tokens are the observation's
    first ones, untrained, and the episode ends there."""
    (problem,) = [Problem(id="p0", question="Problem p0: what is 6*7?", answer="42")]
    turn, after = plan_turns(tokenizer, [("print('b')", "merged")])[0]
    obs = observation_ids(tokenizer, OUTPUTS["print('b')"])
    prompt = prompt_ids(tokenizer, SYSTEM, problem.question)
    inside = [k for k in range(1, len(obs)) if tokenizer.decode(obs[:k]).endswith("\ufffd")]  # mid-character
    keep = inside[0] if inside else len(obs) // 2
    policy = ScriptedPolicy(vocab_size(tokenizer), lambda _: turn + after, filler=after[0])
    result = rollout(
        [problem],
        1,
        HFSampler(policy, tokenizer),
        tokenizer,
        python_tool_envs(ReplyExecutor(), max_turns=3),
        EpisodeSpec(
            system_prompt=SYSTEM,
            max_turns=3,
            max_new_tokens_per_turn=64,
            max_total_tokens=len(prompt) + len(turn) + keep,
        ),
    )
    (t,) = result.trajectories
    assert t.input_ids == prompt + turn + obs[:keep] and t.finish_reason == "length"
    assert t.loss_mask == [0] * len(prompt) + [1] * len(turn) + [0] * keep


@pytest.mark.slow
def test_the_contract_with_real_smollm2_weights():
    """SmolLM2-135M-Instruct on arithmetic, real sandbox: a first code turn given (with the model's log-probs of
    it, so that an observation surely follows), then the model samples (HFSampler). Whatever it writes, the lists
    align, the prompt is the template's, observations are their text's tokens, a code turn ends at its fence's
    last backtick, and the update's recomputation matches the sampler's log-probs. About a minute on 2 cores."""
    from gtpo.model.policy import load_policy
    from gtpo.sandbox import SandboxLimits, SandboxPool
    from gtpo.tasks.arith import heldout_problems

    model, tokenizer = load_policy(str(prepared("smollm2-135m-instruct", "model.safetensors")))
    system = "Write one ```python code block that prints the result, then give the final answer in \\boxed{}."
    code = encode(tokenizer, "I will compute it.\n```python\nprint(6 * 7)\n```")
    with SandboxPool(SandboxLimits(wall_time_s=2.0), max_workers=2) as pool:
        result = rollout(
            heldout_problems()[:2],
            2,
            ForcedThenSampled(model.eval(), tokenizer, code),
            tokenizer,
            python_tool_envs(pool, max_turns=2),
            EpisodeSpec(
                system_prompt=system, max_turns=2, max_new_tokens_per_turn=96, max_total_tokens=512, temperature=1.0
            ),
            seed=0,
        )
    for t in result.trajectories:
        assert len(t.input_ids) == len(t.loss_mask) == len(t.turn_ids) == len(t.sampler_logprobs)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": t.problem.question}]
        template = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        assert t.input_ids[: t.prompt_len] == list(template["input_ids"] if hasattr(template, "keys") else template)
        pos = t.prompt_len
        for k, turn in enumerate(t.turns):
            ids = t.input_ids[pos : pos + turn.num_model_tokens]
            assert t.loss_mask[pos : pos + len(ids)] == [1] * len(ids) and t.turn_ids[pos : pos + len(ids)] == [
                k
            ] * len(ids)
            assert tokenizer.decode(ids, skip_special_tokens=True) == turn.text
            if turn.exec_status is not None:  # a code turn: it ends with the token holding the fence's last backtick
                close = turn.text.index("```", turn.text.index("```python") + 9) + 3
                assert len(tokenizer.decode(ids[:-1], skip_special_tokens=True)) < close <= len(turn.text)
            pos += len(ids)
            if turn.exec_status is not None and k + 1 < len(t.turns):
                obs = observation_ids(tokenizer, turn.tool_output)
                assert t.input_ids[pos : pos + len(obs)] == obs and t.loss_mask[pos : pos + len(obs)] == [0] * len(obs)
                pos += len(obs)
        assert pos == len(t.input_ids) and t.turns[0].tool_output == "42\n" and t.num_turns == 2
    batch = collate(result.trajectories, 0)
    mask = batch.loss_mask.bool()
    recomputed = trainer_logprobs(model, result.trajectories, 1.0)
    torch.testing.assert_close(recomputed[mask], batch.sampler_logprobs[mask], atol=2e-4, rtol=0)
