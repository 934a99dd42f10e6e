"""The training mix: how often each prompt of the training pool is drawn.

Two recipe settings shape it, both acting on the *draw* from the fixed pool (the pool's texts stay
the same, so the prompts held out from them stay held out):

- ``TrainConfig.level_weights``: the relative chance of each complexity level;
- ``TrainConfig.concept_shares``: the share of training scenes that hold a concept (an object
  color, shape or size of any group), e.g. ``(("purple", 0.01),)``: purple in 1% of the scenes
  drawn, 0 holding it out. An engine sees a rare concept rarely and draws it badly, as small
  text-to-image models draw the long tail of their data (issue 21). The pool prompts holding a
  concept have their chance scaled by one factor per concept, found by iterative proportional
  fitting so that every share is met together.

This acts on training data only: the trained engine is a function of its weights, and nothing at
generation time looks at a prompt's words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from t2i_router.engines.recipe import CONCEPTS, TrainingError
from t2i_router.world import COMPLEXITY_LEVELS

_FIT_ITERATIONS = 500
_FIT_TOLERANCE = 1e-6


def scene_concepts(spec: object) -> frozenset[str]:
    """The concepts a scene holds: each group's color, shape and size."""
    return frozenset(v for g in spec.groups for v in (g.color, g.shape, g.size))


def concept_matrix(pairs: Sequence[tuple[str, object]], concepts: Sequence[str]) -> np.ndarray:
    """(N, C) bool: pool prompt i holds concept c."""
    held = [scene_concepts(spec) for _, spec in pairs]
    return np.array([[c in h for c in concepts] for h in held], dtype=bool).reshape(
        len(pairs), len(concepts)
    )


def pool_probabilities(
    pairs: Sequence[tuple[str, object]],
    level_weights: Sequence[float] | None = None,
    concept_shares: Sequence[tuple[str, float]] | None = None,
) -> np.ndarray | None:
    """Chance of drawing each pool prompt, or None for the plain uniform draw.

    Level weights set each prompt's chance first; concept shares then scale the chance of the
    prompts holding each concept until that concept's share of the draw is met (all shares at
    once; a share of 0 gives those prompts no chance at all).

    Raises:
        TrainingError: when a concept is in no prompt the level weights draw, or the shares cannot
            be met together (what is left has no chance, or the fit does not converge).
    """
    if level_weights is None and concept_shares is None:
        return None
    levels = np.array([COMPLEXITY_LEVELS.index(spec.complexity) for _, spec in pairs])
    weights = np.ones(len(COMPLEXITY_LEVELS)) if level_weights is None else level_weights
    p = np.asarray(weights, dtype=np.float64)[levels]
    if p.sum() <= 0:
        raise TrainingError("level_weights give every prompt of the pool a chance of 0")
    p = p / p.sum()
    if not concept_shares:
        return p
    names = [c for c, _ in concept_shares]
    targets = np.array([s for _, s in concept_shares])
    holds = concept_matrix(pairs, names)  # (N, C)
    for j, name in enumerate(names):
        if p[holds[:, j]].sum() == 0:
            raise TrainingError(
                f"concept_shares names {name!r}, which no prompt of the pool drawn holds"
            )
        if targets[j] == 0:
            p[holds[:, j]] = 0.0
    if p.sum() <= 0:
        raise TrainingError(
            f"concept_shares {dict(concept_shares)} hold out every prompt of the pool"
        )
    p = p / p.sum()
    fit = targets > 0
    for _ in range(_FIT_ITERATIONS):
        shares = holds.T.astype(np.float64) @ p
        if np.all(np.abs(shares - targets)[fit] < _FIT_TOLERANCE):
            return p
        for j in np.flatnonzero(fit):
            s = float(p[holds[:, j]].sum())
            if not 0.0 < s < 1.0:  # held out by another share, or in every prompt left
                break
            p[holds[:, j]] *= targets[j] * (1.0 - s) / (s * (1.0 - targets[j]))
            p = p / p.sum()
        else:
            continue
        break
    shares = holds.T.astype(np.float64) @ p
    got = ", ".join(f"{n} {s:.4f}" for n, s in zip(names, shares, strict=True))
    raise TrainingError(
        f"concept_shares {dict(concept_shares)} cannot be met together on this pool (got {got})"
    )


def mix_summary(pairs: Sequence[tuple[str, object]], p: np.ndarray | None) -> dict:
    """Share of the draw by level and by concept (for the log and the model card)."""
    n = len(pairs)
    p = np.full(n, 1.0 / n) if p is None else p
    levels = np.array([spec.complexity for _, spec in pairs])
    holds = concept_matrix(pairs, CONCEPTS)
    return {
        "levels": {lv: round(float(p[levels == lv].sum()), 4) for lv in COMPLEXITY_LEVELS},
        "concepts": {c: round(float(p[holds[:, j]].sum()), 4) for j, c in enumerate(CONCEPTS)},
    }
