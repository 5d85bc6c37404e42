"""gtpo.method.similarity: the TF-IDF code similarity, the optional embedding similarity, name lookup."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from gtpo.method.similarity import EmbeddingSimilarity, code_tokens, get_similarity, tfidf_code_similarity

SNIPPETS = [
    "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 5*x + 6, x))",
    "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 5*x - 6, x))",
    "import math\nprint(math.comb(10, 3))",
    "total = 0\nfor k in range(10):\n    total += k\nprint(total)",
    "",
]


def test_code_tokens_are_identifiers_numbers_and_operators() -> None:
    assert code_tokens("y = x**2 + 3.5e-1 // k_1  # ok") == [
        "y", "=", "x", "**", "2", "+", "3.5e-1", "//", "k_1", "#", "ok",
    ]  # fmt: skip
    assert code_tokens("a<=b!=c") == ["a", "<=", "b", "!=", "c"]


def test_identical_code_scores_one_whatever_the_layout() -> None:
    a = "x = 1\nprint(x + 2)"
    b = "x=1\n\nprint( x+2 )"
    assert tfidf_code_similarity([a], [b])[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_code_with_no_common_token_scores_zero() -> None:
    assert tfidf_code_similarity(["alpha beta"], ["gamma + 7"])[0, 0].item() == 0.0


def test_empty_code_scores_zero() -> None:
    sim = tfidf_code_similarity(["", "x = 1"], ["x = 1", ""])
    assert sim.tolist() == [[0.0, 0.0], [pytest.approx(1.0, abs=1e-6), 0.0]]


def test_similar_code_scores_between_and_closer_code_scores_higher() -> None:
    sim = tfidf_code_similarity([SNIPPETS[1], SNIPPETS[2]], [SNIPPETS[0]])
    assert 1.0 > sim[0, 0].item() > sim[1, 0].item() >= 0.0


def test_matrix_is_symmetric_bounded_and_shaped() -> None:
    sim = tfidf_code_similarity(SNIPPETS, SNIPPETS)
    assert sim.shape == (len(SNIPPETS), len(SNIPPETS))
    assert sim.dtype == torch.float32
    assert torch.allclose(sim, sim.T)
    assert bool(((sim >= 0.0) & (sim <= 1.0)).all())
    diagonal = sim.diagonal()[:-1]  # the empty snippet has no tokens
    assert torch.allclose(diagonal, torch.ones_like(diagonal), atol=1e-6)
    assert tfidf_code_similarity([], SNIPPETS).shape == (0, len(SNIPPETS))


def test_tfidf_weights_by_hand() -> None:
    # distinct snippets: the query, "fibonacci", "print", "print x", "print y" -> N = 5;
    # df: fibonacci 2, print 4, bigram (fibonacci, print) 1; idf = ln((1 + N) / (1 + df)) + 1
    idf_fib, idf_print, idf_bigram = math.log(6 / 3) + 1, math.log(6 / 5) + 1, math.log(6 / 2) + 1
    query_norm = math.sqrt(idf_fib**2 + idf_print**2 + idf_bigram**2)
    sim = tfidf_code_similarity(["fibonacci print"], ["fibonacci", "print", "print x", "print y"])
    assert sim[0, 0].item() == pytest.approx(idf_fib / query_norm, rel=1e-6)
    assert sim[0, 1].item() == pytest.approx(idf_print / query_norm, rel=1e-6)
    assert sim[0, 0] > sim[0, 1]  # sharing a rare token counts more than sharing a common one


def test_get_similarity_maps_names() -> None:
    assert get_similarity("tfidf") is tfidf_code_similarity
    with pytest.raises(ValueError, match="unknown similarity"):
        get_similarity("cosine")
    with pytest.raises(ValueError, match="model name"):
        get_similarity("st:")


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is not None, reason="sentence-transformers is installed"
)
def test_embedding_similarity_without_the_package_says_how_to_install_it() -> None:
    with pytest.raises(ImportError, match=r"gtpo\[embed\]"):
        EmbeddingSimilarity("all-MiniLM-L6-v2")
    with pytest.raises(ImportError, match="sentence-transformers"):
        get_similarity("st:all-MiniLM-L6-v2")
