"""The route-only load generator, run small: every call answered, the JSON complete, and the
route decision's p50 within 4x the 5 ms goal on a busy 2-core host (the full run's JSON says
whether the goal itself is met: `benchmarks/router_load.py`)."""

from __future__ import annotations

import json

from router_load import main


def test_route_load_answers_every_call_and_reports_latency(tmp_path):
    out = tmp_path / "load.json"
    result = main(
        ["--concurrency", "1", "8", "--requests", "60", "--rate", "50", "--duration-s", "1",
         "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == result
    for load in [*result["closed_loop"].values(), result["open_loop"]]:
        assert load["errors"] == 0
        assert load["p50_ms"] <= load["p99_ms"]
    assert result["closed_loop"]["1"]["p50_ms"] <= 4 * result["goal"]["p50_ms"]
    assert result["estimator"].startswith("untrained")
