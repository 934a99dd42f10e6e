"""The batch invariance the engines promise, as one measure and one assertion.

The same prompt, seed, steps and guidance give the same image whatever else is in the batch, in
whatever order, on any number of threads, up to float rounding: at most :data:`MAX_GRAY_LEVELS`
gray level apart on at most :data:`MAX_SHARE_DIFFERING` of the uint8 values. CPU kernels do not
give bit-identical rows for different batch sizes (about 1e-6 apart), and a value on a rounding
edge of the uint8 image moves one gray level. docs/engines.md, "Batch invariance", states the
claim and the figure ``benchmarks/batch_invariance.py`` measures; tests and that benchmark use
this module, so the claim, the measurement and the tests hold one rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_GRAY_LEVELS = 1
MAX_SHARE_DIFFERING = 1e-3  # 0.1% of the uint8 values


@dataclass(frozen=True)
class ImageDifference:
    """How two makes of the same uint8 images differ.

    Attributes:
        values: uint8 values compared.
        values_differing: values that are not equal.
        images_differing: images (first axis) with at least one differing value.
        max_difference: the largest |difference| in gray levels.
    """

    values: int
    values_differing: int
    images_differing: int
    max_difference: int

    @property
    def share_differing(self) -> float:
        return self.values_differing / self.values if self.values else 0.0

    @property
    def within_claim(self) -> bool:
        """True when the difference is what batching may cause (docs/engines.md)."""
        return (
            self.max_difference <= MAX_GRAY_LEVELS and self.share_differing <= MAX_SHARE_DIFFERING
        )

    def __str__(self) -> str:
        return (
            f"{self.values_differing} of {self.values} uint8 values differ "
            f"({self.share_differing:.3%}, at most {MAX_SHARE_DIFFERING:.1%} allowed), "
            f"in {self.images_differing} image(s), by up to {self.max_difference} gray level(s) "
            f"(at most {MAX_GRAY_LEVELS} allowed)"
        )


def image_difference(actual: np.ndarray, expected: np.ndarray) -> ImageDifference:
    """Compare uint8 images of the same shape, (B, H, W, C) or (H, W, C).

    Raises:
        ValueError: the shapes differ, or either is not uint8.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"images have shape {actual.shape}, expected {expected.shape}")
    if actual.dtype != np.uint8 or expected.dtype != np.uint8:
        raise ValueError(f"images are {actual.dtype} and {expected.dtype}, expected uint8")
    diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    per_image = diff.reshape(diff.shape[0], -1) if diff.ndim == 4 else diff.reshape(1, -1)
    return ImageDifference(
        values=int(diff.size),
        values_differing=int((diff > 0).sum()),
        images_differing=int((per_image > 0).any(axis=1).sum()),
        max_difference=int(diff.max(initial=0)),
    )


def assert_same_images(actual: np.ndarray, expected: np.ndarray, err_msg: str = "") -> None:
    """Assert that two makes of the same images differ only as batching may make them.

    For images made from the same (prompt, seed, steps, guidance) in different batch sizes,
    batch orders, thread counts or kernels: at most :data:`MAX_GRAY_LEVELS` gray level on at
    most :data:`MAX_SHARE_DIFFERING` of the values. Where the computation is the same (same
    batch, same kernel), compare exactly instead.

    Raises:
        AssertionError: giving the count, share and largest difference.
    """
    found = image_difference(actual, expected)
    if not found.within_claim:
        prefix = f"{err_msg}: " if err_msg else ""
        raise AssertionError(f"{prefix}not the same images up to batching: {found}")
