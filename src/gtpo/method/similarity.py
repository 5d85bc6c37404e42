"""Code similarity for GTPO's reward shaping: sim(a, b) -> [len(a), len(b)] matrix with values in [0, 1].

The default, ``tfidf_code_similarity``, is offline and model-free: cosine similarity of TF-IDF vectors of
code-token unigrams and bigrams. ``EmbeddingSimilarity`` uses a sentence-transformers model instead (the
paper's re-implementations used text embeddings) and needs the optional ``embed`` extra.
``get_similarity`` turns the config string (``similarity``: "tfidf" or "st:<model>") into one of them.

What this is not: no caching across calls, no downloads by itself (a sentence-transformers model name that
is not on disk is fetched by that library, on first use only).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

SimilarityFn = Callable[[list[str], list[str]], torch.Tensor]

_CODE_TOKEN = re.compile(
    r"[A-Za-z_]\w*"  # identifiers and keywords
    r"|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"  # numbers
    r"|\*\*=?|//=?|>>=?|<<=?|[-+*/%&|^@:<>=!]=|->"  # multi-character operators
    r"|[^\s\w]"  # any other single symbol: operators, brackets, quotes
)


def code_tokens(code: str) -> list[str]:
    """Split code into identifiers, numbers and operators; whitespace and layout are ignored."""
    return _CODE_TOKEN.findall(code)


def tfidf_code_similarity(a: list[str], b: list[str]) -> torch.Tensor:
    """Cosine similarity of TF-IDF vectors over code-token unigrams and bigrams. [len(a), len(b)] in [0, 1].

    Term frequency is the raw count; idf(t) = ln((1 + N) / (1 + df(t))) + 1 over the N distinct snippets
    of a and b (smoothed, so a term shared by every snippet still counts). Identical code scores 1, code
    with no common n-gram 0; a snippet without tokens scores 0 against everything.
    """
    features = {snippet: _ngram_counts(snippet) for snippet in dict.fromkeys([*a, *b])}
    document_frequency: Counter[str | tuple[str, str]] = Counter()
    for counts in features.values():
        document_frequency.update(counts.keys())
    vocab = {term: col for col, term in enumerate(document_frequency)}
    n_docs = len(features)
    idf = torch.tensor([math.log((1 + n_docs) / (1 + document_frequency[t])) + 1 for t in vocab], dtype=torch.float64)

    def vectors(snippets: list[str]) -> torch.Tensor:
        matrix = torch.zeros(len(snippets), len(vocab), dtype=torch.float64)
        for row, snippet in enumerate(snippets):
            for term, count in features[snippet].items():
                matrix[row, vocab[term]] = count
        weighted = matrix * idf
        return weighted / weighted.norm(dim=1, keepdim=True).clamp(min=1e-12)

    return (vectors(a) @ vectors(b).T).clamp(0.0, 1.0).to(torch.float32)


class EmbeddingSimilarity:
    """Cosine similarity of sentence-transformers embeddings, clipped to [0, 1].

    The package is imported lazily (optional extra ``embed``: ``pip install 'gtpo[embed]'``); its absence
    is reported when this object is built, so a run fails at start-up, not at its first shaped reward.
    The model itself loads on first call.
    """

    def __init__(self, model_name_or_path: str, device: str | None = None) -> None:
        if not model_name_or_path:
            raise ValueError('similarity "st:<model>" needs a model name or path after "st:"')
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ImportError(
                f"similarity 'st:{model_name_or_path}' needs sentence-transformers, which is not installed; "
                "install the optional extra: pip install 'gtpo[embed]' (or use similarity='tfidf')"
            )
        self.model_name_or_path = model_name_or_path
        self.device = device
        self._model: Any = None

    def __call__(self, a: list[str], b: list[str]) -> torch.Tensor:
        if not a or not b:
            return torch.zeros(len(a), len(b))
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.model_name_or_path, device=self.device)
        ea = self._model.encode(a, convert_to_tensor=True, normalize_embeddings=True)
        eb = self._model.encode(b, convert_to_tensor=True, normalize_embeddings=True)
        return (ea @ eb.T).float().cpu().clamp(0.0, 1.0)


def get_similarity(name: str) -> SimilarityFn:
    """Map the config string ``similarity`` to a function: "tfidf" or "st:<model name or path>"."""
    if name == "tfidf":
        return tfidf_code_similarity
    if name.startswith("st:"):
        return EmbeddingSimilarity(name.removeprefix("st:"))
    raise ValueError(
        f"unknown similarity {name!r}: use 'tfidf' (offline default) or 'st:<sentence-transformers model>'"
    )


def _ngram_counts(code: str) -> Counter[str | tuple[str, str]]:
    tokens = code_tokens(code)
    terms: list[str | tuple[str, str]] = [*tokens, *itertools.pairwise(tokens)]
    return Counter(terms)
