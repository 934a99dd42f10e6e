"""Routing baselines: the methods the MoE estimator must beat, behind one small interface.

Every method is a *score* (RouteLLM keeps it apart from the *decision*): fitted on the train
split (and the val split where it picks a setting), it gives for test prompts either a utility
per choice (N, M), from which the M-choice router picks ``argmax_m u_m - lambda c_m``, or only a
two-choice score (N,), higher = more to gain from the cloud default over the edge default. A
method with utilities scores ``u[:, cloud] - u[:, edge]``.

The target is the quality of a choice on a prompt: the mean alignment of its images, averaged
over the label seeds (`prompt_quality`). The edge and cloud defaults are each engine's largest
step count among the choices (`default_pair`).

Methods (``t2i_router.estimator.evaluate.make_method`` builds them by name): ``random`` (a
seeded hash of the prompt),
``length`` (whitespace tokens, sign fitted on train), ``level`` (the parsed prompt's complexity
level, per-level means on train), ``knn`` (CATImage, on mean-pooled MiniLM embeddings), ``mlp``
and ``cems`` (a pooled MLP and a classifier of the best choice, in
`t2i_router.estimator.pooled_models`), ``win`` (a RouteLLM-BERT-style
fine-tuned MiniLM, in `t2i_router.estimator.win_classifier`) and ``oracle`` (the test labels'
own mean gap).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from t2i_router.errors import InvalidRequest
from t2i_router.estimator.choices import Choice
from t2i_router.estimator.labels import LabelSet
from t2i_router.world import ALIGNMENT_ASPECTS

if TYPE_CHECKING:
    from t2i_router.engines.text_encoder import TextEncoder

__all__ = [
    "EmbeddingCache",
    "KnnMethod",
    "LengthMethod",
    "LevelMethod",
    "Method",
    "MethodBase",
    "OracleMethod",
    "RandomMethod",
    "default_pair",
    "prompt_quality",
    "utilities_from_q",
]

_N_ALIGN = len(ALIGNMENT_ASPECTS)  # the alignment aspects come first in ASPECTS


@runtime_checkable
class Method(Protocol):
    """A routing method: fitted once, then scores prompts."""

    name: str

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        """Learn from the train split; ``val`` (if given) picks settings or stops training."""

    def utilities(self, prompts: Sequence[str]) -> np.ndarray | None:
        """(N, M) predicted quality of each choice, or None for a two-choice-only method."""

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """(N,) higher = more to gain from the cloud default over the edge default."""


def prompt_quality(labels: LabelSet) -> np.ndarray:
    """(N, M) quality of each choice on each prompt: mean alignment over its seeds."""
    return labels.alignment.mean(axis=2).astype(np.float64)


def default_pair(choices: Sequence[Choice]) -> tuple[int, int]:
    """Indices of the edge and cloud defaults: the cheapest and dearest engine at most steps.

    ``choices`` are in ascending cost, so the first choice's engine is the edge and the last's
    the cloud.
    """
    if len(choices) < 2 or choices[0].engine == choices[-1].engine:
        raise InvalidRequest(f"choices {[c.name for c in choices]} need two different engines")

    def most_steps(engine: str) -> int:
        idx = [i for i, c in enumerate(choices) if c.engine == engine]
        return max(idx, key=lambda i: choices[i].steps)

    return most_steps(choices[0].engine), most_steps(choices[-1].engine)


def utilities_from_q(q: np.ndarray, applies: np.ndarray | None = None) -> np.ndarray:
    """Utilities (N, M) from predicted qualities Q (N, M, K): the mean of the alignment aspects.

    Args:
        q: (N, M, K) predicted quality per choice and aspect (NaN = not applicable).
        applies: (N, K) weight of each aspect (1 = applies); default all applicable.
    """
    align = np.asarray(q, np.float64)[..., :_N_ALIGN]  # (N, M, A)
    w = np.ones(align.shape[::2]) if applies is None else np.asarray(applies)[:, :_N_ALIGN]
    w = np.where(np.isnan(align), 0.0, w[:, None, :])  # (N, M, A)
    return np.nansum(align * w, axis=-1) / np.maximum(w.sum(-1), 1e-9)


class MethodBase:
    """What the methods share: the edge/cloud pair found at fit, and score from utilities."""

    name = "base"

    def __init__(self) -> None:
        self.pair: tuple[int, int] | None = None

    def _set_pair(self, labels: LabelSet) -> None:
        self.pair = default_pair(labels.choices)

    def _fitted(self) -> tuple[int, int]:
        if self.pair is None:
            raise InvalidRequest(f"method {self.name!r} is not fitted; call fit(train) first")
        return self.pair

    def utilities(self, prompts: Sequence[str]) -> np.ndarray | None:
        return None

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        edge, cloud = self._fitted()
        u = self.utilities(prompts)
        assert u is not None, "a method without utilities overrides score()"
        return u[:, cloud] - u[:, edge]


class RandomMethod(MethodBase):
    """A uniform score per prompt from a seeded hash: the same prompt always scores the same."""

    name = "random_seeded"  # "random" is evaluation's analytic expectation

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        self._set_pair(train)

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        digests = (hashlib.sha256(f"{self.seed}:{p}".encode()).digest()[:8] for p in prompts)
        return np.array([int.from_bytes(d, "big") / 2**64 for d in digests])


class LengthMethod(MethodBase):
    """Prompt length in whitespace tokens; longer = more gain, unless train shows the reverse."""

    name = "length"

    def __init__(self) -> None:
        super().__init__()
        self.sign = 1.0

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        self._set_pair(train)
        edge, cloud = self._fitted()
        q = prompt_quality(train)
        n = np.array([len(p.split()) for p in train.prompts], np.float64)
        gap = q[:, cloud] - q[:, edge]
        cov = np.cov(n, gap)[0, 1] if len(n) > 1 else 0.0
        self.sign = -1.0 if cov < 0 else 1.0

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        self._fitted()
        return self.sign * np.array([len(p.split()) for p in prompts], np.float64)


class LevelMethod(MethodBase):
    """Complexity level of the parsed prompt: each choice's mean quality per level on train."""

    name = "level"

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[str, np.ndarray] = {}
        self.overall: np.ndarray | None = None

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        self._set_pair(train)
        q = prompt_quality(train)
        self.overall = q.mean(axis=0)
        self.table = {lv: q[train.levels == lv].mean(axis=0) for lv in np.unique(train.levels)}

    def utilities(self, prompts: Sequence[str]) -> np.ndarray:
        from t2i_router.world import PromptError, parse_prompt

        self._fitted()
        rows = []
        for p in prompts:
            try:
                level = parse_prompt(p).complexity
            except PromptError:
                level = None  # a prompt outside the grammar gets the overall means
            rows.append(self.table.get(level, self.overall))
        return np.stack(rows)


class EmbeddingCache:
    """Mean-pooled MiniLM embeddings, computed once per unique prompt.

    Args:
        encoder: The frozen text encoder; default a `TextEncoder` created on first use.
    """

    def __init__(self, encoder: TextEncoder | None = None) -> None:
        self._encoder = encoder
        self._cache: dict[str, np.ndarray] = {}

    def pooled(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, 384) float32 masked mean of the token embeddings of each prompt."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            if self._encoder is None:
                from t2i_router.engines.text_encoder import TextEncoder

                self._encoder = TextEncoder()
            tokens, mask = self._encoder.encode(new)  # (B, L, D), (B, L)
            vecs = tokens.sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)  # (B, D)
            self._cache.update(zip(new, vecs.astype(np.float32)))
        if not len(prompts):
            return np.zeros((0, 384), np.float32)
        return np.stack([self._cache[p] for p in prompts])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class KnnMethod(MethodBase):
    """CATImage's KNN: each choice's mean quality over the k most cosine-similar train prompts.

    k is picked on val by the mean squared error of the predicted gap (steadier than a ranking
    metric on two noisy seeds); without val it is ``k``.
    """

    name = "knn"

    def __init__(
        self,
        cache: EmbeddingCache,
        k: int = 10,
        candidates: Sequence[int] = (1, 5, 10, 25, 50, 100),
    ) -> None:
        super().__init__()
        if k < 1 or any(c < 1 for c in candidates):
            raise InvalidRequest(f"k must be >= 1, got k={k}, candidates={list(candidates)}")
        self.cache, self.k, self.candidates = cache, k, tuple(candidates)
        self.k_val_mse: dict[int, float] = {}

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        self._set_pair(train)
        self.keys = _unit(self.cache.pooled(list(train.prompts)))  # (T, D)
        self.values = prompt_quality(train)  # (T, M)
        if val is not None:
            edge, cloud = self._fitted()
            qv = prompt_quality(val)
            sims = _unit(self.cache.pooled(list(val.prompts))) @ self.keys.T  # (V, T)
            order = np.argsort(-sims, axis=1, kind="stable")
            for k in sorted({min(c, len(self.keys)) for c in self.candidates}):
                u = self.values[order[:, :k]].mean(axis=1)  # (V, M)
                err = (u[:, cloud] - u[:, edge]) - (qv[:, cloud] - qv[:, edge])
                self.k_val_mse[k] = float(np.mean(err**2))
            self.k = min(self.k_val_mse, key=self.k_val_mse.__getitem__)

    def utilities(self, prompts: Sequence[str]) -> np.ndarray:
        self._fitted()
        sims = _unit(self.cache.pooled(list(prompts))) @ self.keys.T  # (N, T)
        k = min(self.k, len(self.keys))
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (N, k)
        return self.values[top].mean(axis=1)


class OracleMethod(MethodBase):
    """The true mean quality of each choice on each test prompt: the unreachable upper bound.

    It ranks by the same seeds it is scored on, so it also fits their noise; the split-half
    oracle of `t2i_router.estimator.evaluation` is the honest noise ceiling.
    """

    name = "oracle"

    def __init__(self, test: LabelSet) -> None:
        super().__init__()
        self._set_pair(test)
        self.table = dict(zip(test.prompts.tolist(), prompt_quality(test)))

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        """Nothing to learn."""

    def utilities(self, prompts: Sequence[str]) -> np.ndarray:
        missing = [p for p in prompts if p not in self.table]
        if missing:
            raise InvalidRequest(
                f"the oracle has no labels for {len(missing)} prompts: {missing[0]!r}"
            )
        return np.stack([self.table[p] for p in prompts])
