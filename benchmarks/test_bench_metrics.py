"""Metric throughput: labeling must never wait on the metrics.

Goal (issue 2): at least 2,000 images/s on one core for batches of 1,024 images.
Run: ``make bench`` (JSON in benchmarks/results/) asserts the goal on pytest-benchmark's median.
``make test`` (benchmarking off) asserts it too, on the best of a few in-process timings, with
a tolerance of 0.75 (1,500 images/s) for a 2-core host shared with other jobs: the best of 5 was
2,119 images/s (median 2,057) on such a host at a load average of about 10.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from t2i_router.world import render, sample_prompts, score_images

BATCH = 1024
GOAL_IMAGES_PER_S = 2000.0
# Best-of-N timing under `make test`: a shared host can only slow a run down, so the best of a
# few is the closest to the code's own speed; the tolerance covers slower hosts.
REPEATS = 5
TOLERANCE = 0.75


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


def test_score_images_meets_its_throughput_goal_within_tolerance(batch):
    images, specs = batch
    seconds = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        score_images(images, specs)
        seconds.append(time.perf_counter() - t0)
    images_per_s = BATCH / min(seconds)
    assert images_per_s >= TOLERANCE * GOAL_IMAGES_PER_S, (
        f"{images_per_s:.0f} images/s (best of {REPEATS}); goal {GOAL_IMAGES_PER_S:.0f}, "
        f"accepted down to {TOLERANCE * GOAL_IMAGES_PER_S:.0f} on a shared host"
    )
