"""The embedded task and its SFT traces: deterministic, correct, disjoint, tokenized like the rollout."""

from gtpo.tasks.arith import heldout_problems, make_problems, train_problems
from gtpo.tasks.traces import make_traces
from gtpo.tiny.build import corpus, tokenize_trace
from gtpo.tiny.tokenizer import build_tokenizer
from gtpo.tools import extract_code, format_tool_output


def test_problems_are_deterministic_and_correct():
    assert make_problems(9, seed=4) == make_problems(9, seed=4)
    assert make_problems(9, seed=4) != make_problems(9, seed=5)
    for p in make_problems(30, seed=1):
        expression = p.question.replace("What is ", "").rstrip("?")
        if p.question.startswith("Let x = "):
            product, rest = p.question[len("Let x = ") :].split(". What is x")
            expression = f"({product}){rest.rstrip('?')}"
        assert str(eval(expression)) == p.answer


def test_heldout_is_disjoint_from_training():
    held = {p.question for p in heldout_problems()}
    assert len(held) >= 250
    for seed in (0, 1):
        assert not held & {p.question for p in train_problems(seed=seed, n=3000)}


def test_traces_mix_and_outputs_come_from_execution():
    traces = make_traces(300, seed=0)
    styles = {"guess": 0, "fix": 0, "clean": 0}
    for trace in traces:
        model = [text for kind, text in trace.segments if kind == "model"]
        tool = [text for kind, text in trace.segments if kind == "tool"]
        if not tool:
            styles["guess"] += 1
            assert trace.answer not in model[-1]
            continue
        style = "fix" if "Error" in tool[0] else "clean"
        styles[style] += 1
        # What Python prints for the trace's code, written out here: the fixed or clean block prints the
        # answer; the fix trace's first block reads y before assigning it.
        expected = [f"{trace.answer}\n"]
        if style == "fix":
            expected.insert(0, "NameError: name 'y' is not defined")
        assert tool == [format_tool_output(text) for text in expected]
        assert [extract_code(text)[0] is not None for text in model[:-1]] == [True] * len(tool)
        assert model[-1] == f"\\boxed{{{trace.answer}}}"
    assert all(count > 20 for count in styles.values())


def test_trace_tokens_match_rollout_boundaries():
    traces = make_traces(50, seed=0)
    tokenizer = build_tokenizer(corpus(traces))
    trace = next(t for t in traces if len(t.segments) == 3)
    ids, mask = tokenize_trace(tokenizer, trace)
    observation = tokenizer.encode(trace.segments[1][1], add_special_tokens=False)
    start = next(i for i in range(len(ids)) if ids[i : i + len(observation)] == observation)
    assert set(mask[start : start + len(observation)]) == {0}
    assert mask[-1] == 1 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=True) == (
        trace.segments[0][1] + trace.segments[2][1]
    )
    assert [len(tokenizer.encode(d, add_special_tokens=False)) for d in "0123456789"] == [1] * 10
