"""The training recipe: :class:`TrainConfig` (saved in every checkpoint) and its LR schedule.

Recipe (DESIGN, "Engines"): DDPM 1000 steps, cosine schedule, v-prediction, AdamW, linear
warm-up, gradient clipping, EMA weights, the prompt dropped to the empty prompt 10% of the time
so that classifier-free guidance works.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from t2i_router.errors import FailedPrecondition
from t2i_router.world import COMPLEXITY_LEVELS
from t2i_router.world.vocab import OBJECT_COLORS, SHAPES, SIZES

log = logging.getLogger(__name__)


STATE_FILE = "train_state.pt"

# What ``TrainConfig.concept_shares`` may name: every value of a group's color, shape or size
# (disjoint sets; "white" and "black" are object colors here, backgrounds are not concepts).
CONCEPTS: tuple[str, ...] = (*OBJECT_COLORS, *SHAPES, *SIZES)


class TrainingError(FailedPrecondition, RuntimeError):
    """A run cannot start or resume.

    Settings that do not fit the engine, this host or the checkpoint (grounding on a pooled
    engine, CUDA where there is none), or a missing or mismatched checkpoint. Flag values out of
    range are rejected before, by the CLI's argument types.
    """


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings (defaults: the recipe that trained on this machine)."""

    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    # Final phase (off by default): from step ``lr_decay_from`` the learning rate follows a
    # cosine from ``lr`` down to ``lr * min_lr_factor`` over ``lr_decay_steps`` steps, then holds.
    lr_decay_from: int | None = None
    lr_decay_steps: int = 2000
    min_lr_factor: float = 0.1
    text_dropout: float = 0.1
    data_seed: int = 1000
    prompt_pool: int = 10_000
    # Relative chance of drawing a pool prompt of each complexity level (single, group, pair,
    # relation); None draws every pool prompt alike (the pool holds the levels in equal shares).
    level_weights: tuple[float, ...] | None = None
    # Share of the training scenes drawn that hold a concept (a group's color, shape or size,
    # one of CONCEPTS), as sorted (concept, share) pairs, e.g. (("purple", 0.01),); 0 holds the
    # concept out. Applied after level_weights by scaling the chance of the pool prompts that
    # hold it (engines.mix); None: no concept is singled out. A dict is accepted and sorted.
    concept_shares: tuple[tuple[str, float], ...] | None = None
    # Weight of the grounding loss (engines.grounding: each group's color and shape words should
    # attend to the group's pixels); 0 trains on the denoising loss alone. Cross-attention only.
    grounding_weight: float = 0.0
    # Share of each batch whose timesteps are drawn from [high_noise_from, num_train_timesteps)
    # instead of from all timesteps: the high-noise steps, where sampling decides the layout
    # from pure noise (docs/engines.md, "Cloud: what the cloud would need at t = 999"). 0: uniform.
    high_noise_share: float = 0.0
    high_noise_from: int = 800
    checkpoint_every_s: float = 300.0
    eval_every_s: float = 900.0
    eval_prompts_per_level: int = 16
    eval_seed: int = 777_000  # never used for training data
    threads: int = 0  # 0 = torch's default
    device: str = "cpu"  # where the UNet trains ("cuda" on a GPU host); data stays on the CPU
    data_workers: int = 0  # processes rendering batches ahead (0: render in the training loop)

    def __post_init__(self) -> None:
        if self.level_weights is not None:
            weights = tuple(float(w) for w in self.level_weights)
            if len(weights) != len(COMPLEXITY_LEVELS) or min(weights) < 0 or sum(weights) <= 0:
                levels = ", ".join(COMPLEXITY_LEVELS)
                raise TrainingError(
                    f"level_weights is {list(self.level_weights)}: expected "
                    f"{len(COMPLEXITY_LEVELS)} non-negative weights ({levels}), not all zero"
                )
            object.__setattr__(self, "level_weights", weights)
        object.__setattr__(self, "concept_shares", normalize_concept_shares(self.concept_shares))
        if not (math.isfinite(self.grounding_weight) and self.grounding_weight >= 0):
            raise TrainingError(f"grounding_weight is {self.grounding_weight}: expected >= 0")
        if not (0.0 <= self.high_noise_share <= 1.0):
            raise TrainingError(
                f"high_noise_share is {self.high_noise_share}: expected a share in [0, 1]"
            )
        if self.high_noise_from < 0:
            raise TrainingError(f"high_noise_from is {self.high_noise_from}: expected >= 0")


def normalize_concept_shares(
    shares: Mapping[str, float] | Iterable[tuple[str, float]] | None,
) -> tuple[tuple[str, float], ...] | None:
    """``shares`` as sorted ``(concept, share)`` pairs, checked; None stays None.

    Raises:
        TrainingError: naming an unknown or repeated concept, or a share outside [0, 1).
    """
    if shares is None:
        return None
    items = list(shares.items() if isinstance(shares, Mapping) else shares)
    out: dict[str, float] = {}
    for item in items:
        try:
            concept, share = item
            share = float(share)
        except (TypeError, ValueError):
            raise TrainingError(
                f"concept_shares entry {item!r} is not a (concept, share) pair"
            ) from None
        if concept not in CONCEPTS:
            raise TrainingError(
                f"concept_shares names {concept!r}: expected one of {', '.join(CONCEPTS)}"
            )
        if concept in out:
            raise TrainingError(f"concept_shares names {concept!r} twice")
        if not (math.isfinite(share) and 0.0 <= share < 1.0):
            raise TrainingError(f"concept_shares gives {concept!r} {share}: expected in [0, 1)")
        out[concept] = share
    if not out:
        raise TrainingError("concept_shares is empty: give None for the plain draw")
    return tuple(sorted(out.items()))


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Learning rate at ``step`` over ``cfg.lr``: linear warm-up, flat, then an optional cosine."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_decay_from is not None and step > cfg.lr_decay_from:
        progress = min(1.0, (step - cfg.lr_decay_from) / max(1, cfg.lr_decay_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        factor *= cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * cosine
    return factor
