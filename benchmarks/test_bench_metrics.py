"""Metric throughput: labeling must never wait on the metrics.

Goal (issue 2): at least 2,000 images/s on one core for batches of 1,024 images.
Run: ``make bench`` (JSON in benchmarks/results/); ``make test`` runs it once as a test.
"""

from __future__ import annotations

import numpy as np
import pytest

from t2i_router.world import render, sample_prompts, score_images

BATCH = 1024
GOAL_IMAGES_PER_S = 2000.0


@pytest.fixture(scope="module")
def batch():
    specs = [spec for _, spec in sample_prompts(BATCH, seed=0)]
    images = np.stack([render(spec, i) for i, spec in enumerate(specs)])
    score_images(images[:8], specs[:8])  # builds the palette lookup table once
    return images, specs


def test_bench_score_images_batch_1024(benchmark, batch):
    images, specs = batch
    scores = benchmark(score_images, images, specs)
    assert scores.shape == (BATCH, 8)
    if benchmark.stats is not None:  # None under --benchmark-disable
        images_per_s = BATCH / benchmark.stats.stats.median
        benchmark.extra_info["images_per_s"] = round(images_per_s)
        benchmark.extra_info["goal_images_per_s"] = GOAL_IMAGES_PER_S
        assert images_per_s >= GOAL_IMAGES_PER_S, f"{images_per_s:.0f} images/s"
