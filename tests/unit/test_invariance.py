"""The batch-invariance rule: at most 1 gray level on at most 0.1% of the uint8 values."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_router.engines.invariance import assert_same_images, image_difference


def images_with(changes: dict[int, int], n_images: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A seeded batch and a copy with ``changes[flat index] = gray levels added``."""
    expected = np.random.default_rng(0).integers(2, 250, (n_images, 32, 32, 3), dtype=np.uint8)
    actual = expected.copy()
    for index, levels in changes.items():
        actual.flat[index] += levels
    return actual, expected


def test_one_gray_level_on_a_tenth_of_a_percent_passes():
    actual, expected = images_with({i: 1 for i in range(6)})  # 6 of 6144 values: 0.098%
    assert_same_images(actual, expected)
    found = image_difference(actual, expected)
    assert (found.values, found.values_differing, found.images_differing) == (6144, 6, 1)
    assert found.max_difference == 1 and found.within_claim


def test_two_gray_levels_fail_naming_the_count_share_and_largest_difference():
    actual, expected = images_with({0: 1, 5000: -2})
    with pytest.raises(AssertionError) as excinfo:
        assert_same_images(actual, expected, err_msg="alone vs batch")
    message = str(excinfo.value)
    assert message.startswith("alone vs batch: not the same images up to batching")
    assert "2 of 6144 uint8 values differ (0.033%" in message
    assert "in 2 image(s), by up to 2 gray level(s) (at most 1 allowed)" in message


def test_one_gray_level_on_more_than_a_tenth_of_a_percent_fails():
    actual, expected = images_with({i: 1 for i in range(7)})  # 7 of 6144: 0.114%
    with pytest.raises(AssertionError, match=r"7 of 6144 uint8 values differ \(0\.114%"):
        assert_same_images(actual, expected)


def test_identical_images_and_bad_inputs():
    actual, expected = images_with({})
    assert_same_images(actual[0], expected[0])  # one image (H, W, C)
    assert image_difference(actual, expected).values_differing == 0
    with pytest.raises(ValueError, match=r"shape \(1, 32, 32, 3\), expected \(2, 32, 32, 3\)"):
        assert_same_images(actual[:1], expected)
    with pytest.raises(ValueError, match="int64 and uint8, expected uint8"):
        assert_same_images(actual.astype(np.int64), expected)
