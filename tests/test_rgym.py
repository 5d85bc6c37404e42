"""reasoning-gym as a data source, and its own verifier against gtpo's grader on generated problems."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gtpo.config import ConfigError, DataConfig

pytest.importorskip("reasoning_gym", reason="reasoning-gym is in the optional extra: pip install 'gtpo[real]'")

from gtpo.data.grading import grade_batch
from gtpo.data.problems import load_eval_problems, load_train_problems
from gtpo.tasks import rgym


def test_sources_parse_their_options():
    assert rgym.parse("reasoning-gym:basic_arithmetic", "data.train") == ("basic_arithmetic", {})
    name, options = rgym.parse("reasoning-gym:gsm_symbolic?size=50&seed=3&difficulty=0.5&x=abc", "data.train")
    assert (name, options) == ("gsm_symbolic", {"size": 50, "seed": 3, "difficulty": 0.5, "x": "abc"})
    with pytest.raises(ConfigError, match="name a dataset"):
        rgym.parse("reasoning-gym:", "data.train")


def test_train_and_heldout_sets_are_deterministic_and_disjoint():
    cfg = DataConfig(train="reasoning-gym:basic_arithmetic?size=300", eval="reasoning-gym:basic_arithmetic?size=40")
    train, held = load_train_problems(cfg, seed=0), load_eval_problems(cfg)
    assert len(held) == 40 and 0 < len(train) <= 300
    assert not {p.question for p in train} & {p.question for p in held}
    assert [p.question for p in load_train_problems(cfg, seed=0)] == [p.question for p in train]
    assert [p.question for p in load_train_problems(cfg, seed=1)] != [p.question for p in train]
    assert train[0].question.startswith("Calculate") and int(train[0].answer) == int(train[0].answer)


def test_an_unknown_dataset_is_one_config_error():
    with pytest.raises(ConfigError, match=r"data.train 'reasoning-gym:no_such_set': reasoning-gym refused it"):
        load_train_problems(DataConfig(train="reasoning-gym:no_such_set"), seed=0)


@pytest.mark.parametrize("name", ["basic_arithmetic", "gsm_symbolic"])
def test_reasoning_gym_verifier_and_gtpo_grader_agree(name):
    """100 problems each: the reference answer is right for both; answer + 1, the negated answer (nonzero) and
    an empty answer are wrong by arithmetic, and gtpo's grader must say so. reasoning-gym agrees on all of them
    except one known leniency: gsm_symbolic's verifier also accepts a sign-flipped answer (-57 for 57)."""
    dataset = rgym.verifier(f"reasoning-gym:{name}?size=100&seed=7")
    entries = list(dataset)
    refs = [e["answer"] for e in entries]
    wrong = [str(Decimal(a) + 1) for a in refs] + [f"-{a}" for a in refs if float(a) != 0]
    wrong += [""] * len(refs)
    ours_right = grade_batch(refs, refs)
    ours_wrong = grade_batch(wrong, refs + [a for a in refs if float(a) != 0] + refs)
    assert all(ours_right) and not any(ours_wrong)
    assert all(dataset.score_answer(a, e) == 1.0 for a, e in zip(refs, entries, strict=True))
    plus_one = [dataset.score_answer(w, e) for w, e in zip(wrong[: len(refs)], entries, strict=True)]
    assert max(plus_one) < 1.0
    flipped = [dataset.score_answer(f"-{e['answer']}", e) for e in entries if float(e["answer"]) != 0]
    if name == "basic_arithmetic":
        assert max(flipped) < 1.0
    else:
        assert min(flipped) == 1.0  # reasoning-gym 0.1.25's leniency, pinned in the extra
