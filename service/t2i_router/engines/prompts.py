"""The prompts and seeds the engines are measured and tuned on, apart from their training ones.

The report scores held-out prompts (REPORT_SEED); settings are tuned on others (TUNING_SEED), so
no default is tuned on the prompts the report then measures it with; the estimator's label
splits (estimator/labels.py) draw from the same functions.
"""

from __future__ import annotations

from t2i_router.engines.recipe import TrainConfig
from t2i_router.world import (
    COMPLEXITY_LEVELS,
    sample_prompts,
)

REPORT_SEED = 999_000  # a sampler seed never used for training data (training: data_seed 1000)


# Prompts for choosing settings (sampling sweeps, design trials), so that no default is tuned on
# the prompts the report then measures it with.
TUNING_SEED = 998_000


REPORT_MAX_N = 2000  # tuning prompts avoid the report's prompts for any --n up to this


def training_texts(train_cfg: TrainConfig | None = None) -> set[str]:
    """The prompt texts an engine trained with ``train_cfg`` (default: the recipe) has seen."""
    cfg = train_cfg or TrainConfig()
    return {t for t, _ in sample_prompts(cfg.prompt_pool, seed=cfg.data_seed)}


def held_out_prompts(
    n: int, seed: int = REPORT_SEED, exclude: set[str] | frozenset[str] = frozenset()
) -> list[tuple[str, object]]:
    """``n`` prompts balanced over complexity, none of whose texts is in ``exclude``.

    The world is small: a fresh seed alone repeats about one simple prompt in ten of the
    training pool word for word, so the report excludes the training texts explicitly.
    """
    each = max(1, n // len(COMPLEXITY_LEVELS))
    pairs: list[tuple[str, object]] = []
    for i, lv in enumerate(COMPLEXITY_LEVELS):
        fresh = [
            p for p in sample_prompts(4 * each, seed=seed + i, complexity=lv) if p[0] not in exclude
        ]
        if len(fresh) < each:
            raise ValueError(f"only {len(fresh)} {lv} prompts outside the excluded texts")
        pairs += fresh[:each]
    return pairs


def tuning_prompts(
    n: int, seed: int = TUNING_SEED, train_cfg: TrainConfig | None = None
) -> list[tuple[str, object]]:
    """``n`` prompts for tuning: neither training prompts nor any the report scores.

    The report's prompts for a smaller ``n`` are a prefix of those for a larger one (the sampler
    draws in sequence), so excluding the report's prompts at ``REPORT_MAX_N`` excludes them all.
    """
    if seed == REPORT_SEED:
        raise ValueError(f"seed is {seed}, the report's own; tuning needs prompts it never scores")
    seen = training_texts(train_cfg)
    report = {t for t, _ in held_out_prompts(REPORT_MAX_N, exclude=seen)}
    return held_out_prompts(n, seed, exclude=seen | report)


def image_seeds(k: int, n: int) -> list[int]:
    """The seeds of the ``k``-th image of ``n`` prompts: ``k * 1_000_003 + i`` for prompt ``i``,
    the same for every engine, so engines and settings are compared on the same noise."""
    return [k * 1_000_003 + i for i in range(n)]
