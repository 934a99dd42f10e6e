"""estimator_latency runs small, and the static-table path beats MiniLM in the same run."""

from __future__ import annotations

import estimator_latency


def test_static_features_are_faster_than_contextual_in_the_same_run() -> None:
    report = estimator_latency.run(
        batch_sizes=(1,), repeats=3, threads=1, paths=("static/torch", "contextual/torch")
    )
    ms = report["ms_per_prompt"]
    static, contextual = (
        ms[p]["batch_1_ms_per_prompt"] for p in ("static/torch", "contextual/torch")
    )
    assert static > 0 and contextual > 0
    # A table lookup against six transformer layers: measured ~40x here; 2x leaves room for noise.
    assert contextual / static > 2, ms
