"""Budget control across K router replicas behind gRPC round_robin: own state vs one shared Redis.

    .venv/bin/python benchmarks/replicas.py          # writes benchmarks/results/replicas.json
    .venv/bin/python benchmarks/replicas.py --k 1 2 --n 2000 --runs 1 --out /tmp/replicas.json

For K = 1, 2, 4 and both ways of keeping the budget (``local``: each replica its own state, the
target on its share; ``redis``: one state in a real redis-server, each dual step an atomic Lua
script), K real routers (grpc.aio servers on free loopback ports, in this process) answer Route
calls from one client channel with ``round_robin`` over all of them. Route makes decisions
only, so no engine and no Triton runs.

The prompts carry their routing score: they come from `t2i_router.router.simulate` (the stream
docs/budget/ is measured on: simple prompts, then a shift to a relation-heavy mix) and a
`ScoreEstimator` turns ``"score 0.0312"`` into the Q whose routing score is 0.0312, so what is
measured is the budget control, not an estimator. Each run warm-starts every replica from the
same 1,000 simple-mix scores, sends simple prompts (``--n`` = 10,000 in the ``--long-runs``,
``--n-short`` = 1,000 in the other ``--runs``), then ``--after`` relation-heavy ones, one prompt
per Route call, ``--concurrency`` calls in flight. Every configuration gets the same streams
(paired runs), and the run fails if a store counted a decision other than once.

Measured, in the order the answers came back:

- the running-rate error |cloud share of the first N answers - target| after N = 1,000 (every
  run) and 10,000 (long runs) requests: the mean over runs, and each run's;
- the recovery after the shift: answers until lambda (the mean over runs of the lambda each
  decision was made with, smoothed over 25 answers) has moved 90% of the way from the simple
  mix's threshold to the relation-heavy mix's.

Goal (issue 22 item 6): with the shared store, K replicas within 1.2x of one replica (K = 1,
local store) on each measure; the JSON says met or missed and by how much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from t2i_router.errors import Unavailable
from t2i_router.router import simulate as sim
from t2i_router.router.batching import BatcherConfig
from t2i_router.router.budget import BudgetConfig, BudgetController, eta_for_recovery
from t2i_router.router.budget_redis import RedisBudgetStore
from t2i_router.router.core import Router
from t2i_router.router.policy import Choice, Policy, PolicyConfig
from t2i_router.router.redis_server import ManagedRedisServer
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router.router.types import Limits
from t2i_router_client import router_pb2, router_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
SIMPLE, RELATION_HEAVY = 0.1, 0.9
GOAL_RATIO = 1.2
SMOOTH = 25
EDGE = Choice("edge_small@8", "edge_small", 8, 0.96)
CLOUD = Choice("cloud_large@20", "cloud_large", 20, 18.9)

log = logging.getLogger("replicas")


class ScoreEstimator:
    """Q whose routing score is the number in the prompt (``"score 0.0312"``): edge 0.5, cloud
    0.5 + score on one metric, so that u_cloud - u_edge = score (the policy's c_scale is the
    cost span)."""

    choices = (EDGE.name, CLOUD.name)
    metric_names = ("alignment",)

    async def predict(self, prompts: Sequence[str]) -> np.ndarray:
        scores = np.array([float(p.split()[1]) for p in prompts])
        q = np.full((len(prompts), 2, 1), 0.5)
        q[:, 1, 0] += scores
        return q

    async def ready(self) -> bool:
        return True


class NoEngines:
    """Route never generates."""

    async def generate(self, model, prompts, seeds, steps=None, guidance=None, timeout_s=None):
        raise Unavailable("the replicas benchmark serves no engine")

    async def is_model_ready(self, model, timeout_s=None) -> bool:
        return True


def make_router(budget: BudgetConfig, store) -> Router:
    policy = Policy(
        PolicyConfig(
            choices=(EDGE, CLOUD),
            metric_weights=(1.0,),
            edge_default=EDGE.name,
            cloud_default=CLOUD.name,
            metric_names=ScoreEstimator.metric_names,
        )
    )
    return Router(
        ScoreEstimator(),
        policy,
        BudgetController(budget, store=store),
        NoEngines(),
        BatcherConfig(max_batch_size=32, max_delay_s=0.002),
        Limits(max_prompt_tokens=0),
    )


def balanced_channel(ports: list[int]) -> grpc.aio.Channel:
    config = {"loadBalancingConfig": [{"round_robin": {}}]}
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    return grpc.aio.insecure_channel(target, options=[("grpc.service_config", json.dumps(config))])


async def one_run(
    k: int,
    store: str,
    budget: BudgetConfig,
    warm_scores: np.ndarray,
    scores: np.ndarray,
    concurrency: int,
    redis_url: str | None,
    prefix: str,
) -> dict:
    """K replicas, one stream; returns the answers' cloud flags and lambdas in arrival order."""
    services = []
    for _ in range(k):
        shared = RedisBudgetStore(redis_url, prefix) if store == "redis" else None
        router = make_router(budget, shared)
        router.budget.warm_start(warm_scores, if_cold=True)
        config = RouterConfig(
            port=0,
            warm_start_prompts=0,
            grace_s=1,
            health_interval_s=1.0,
            # one client sends every call: its concurrency is the load, not a client to limit
            limits=Limits(max_prompt_tokens=0, max_concurrent_per_client=4 * concurrency),
        )
        service = RouterService(config, router)
        await service.start()
        services.append(service)
    prompts = [f"score {s:.6f}" for s in scores]
    order: list[int] = []
    cloud: list[bool] = []
    lam: list[float] = []
    try:
        async with balanced_channel([s.port for s in services]) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            queue = iter(range(len(prompts)))

            async def worker() -> None:
                for i in queue:
                    reply = await stub.Route(
                        router_pb2.RouteRequest(prompts=[prompts[i]]), timeout=30
                    )
                    d = reply.decisions[0]
                    order.append(i)
                    cloud.append(d.engine == CLOUD.engine)
                    lam.append(d.multiplier)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall_s = time.perf_counter() - start
        counted = [s.router.budget.snapshot().decisions for s in services]
    finally:
        for s in services:
            await s.stop()
    total = counted[0] if store == "redis" else sum(counted)
    if total != len(prompts):
        raise RuntimeError(f"{store} K={k}: {total} decisions counted for {len(prompts)} sent")
    served = [s.router.budget.view().decisions for s in services] if store == "local" else None
    return {
        "order": np.asarray(order),
        "cloud": np.asarray(cloud),
        "multiplier": np.asarray(lam),
        "wall_s": wall_s,
        "per_replica_decisions": served,
    }


def _sem(values: list[float]) -> float | None:
    """Standard error of the mean (None for fewer than two values)."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def _recovery_interval(
    paths: list[np.ndarray], before: float, after: float, seed: int
) -> list[float | None]:
    """10th and 90th percentiles of the recovery over bootstrap resamples of the runs."""
    rng = np.random.default_rng(seed)
    found = [
        _recovery([paths[i] for i in rng.integers(0, len(paths), len(paths))], before, after)
        for _ in range(200)
    ]
    values = np.array([np.inf if f is None else f for f in found])
    return [None if not np.isfinite(v) else float(v) for v in np.percentile(values, [10, 90])]


def _recovery(paths: list[np.ndarray], before: float, after: float) -> float | None:
    mean = np.mean(paths, axis=0)
    smooth = np.convolve(mean, np.ones(SMOOTH) / SMOOTH, mode="valid")
    crossed = smooth >= before + 0.9 * (after - before)
    # the window ends at the answer where it first crossed
    return float(np.argmax(crossed) + SMOOTH - 1) if crossed.any() else None


async def measure(args: argparse.Namespace, redis_url: str | None) -> dict:
    rate = args.rate
    before, after = sim.mix_threshold(SIMPLE, rate), sim.mix_threshold(RELATION_HEAVY, rate)
    eta = eta_for_recovery(args.tau, sim.mix_density(SIMPLE, before))
    tau_after = 1.0 / (eta * sim.mix_density(RELATION_HEAVY, after))
    budget = BudgetConfig(
        target_rate=rate, eta=eta, lambda_max=1.0, cost_scale=CLOUD.cost - EDGE.cost,
        edge_cost=EDGE.cost, cloud_cost=CLOUD.cost,
    )  # fmt: skip
    streams = []  # (warm-start scores, stream, prompts before the shift)
    for run in range(args.long_runs + args.runs):
        rng = np.random.default_rng(args.seed + run)
        warm = sim.sample_stream(rng, 1000, SIMPLE).scores
        n_before = args.n if run < args.long_runs else args.n_short
        stream = sim.shifting_stream(rng, [SIMPLE, RELATION_HEAVY], [n_before, args.after])
        streams.append((warm, stream.scores, n_before))
    marks = sorted({1000, args.n_short} | ({args.n} if args.long_runs else set()))
    configs = {}
    for k in args.k:
        for store in args.stores:
            name = f"{store}_k{k}"
            errors: dict[int, list[float]] = {m: [] for m in marks}
            paths, walls = [], []
            per_replica = []
            for run, (warm, scores, n_before) in enumerate(streams):
                out = await one_run(
                    k, store, budget, warm, scores, args.concurrency, redis_url,
                    prefix=f"bench-{os.getpid()}-{name}-{run}",
                )  # fmt: skip
                stationary = out["order"] < n_before
                cloud_before = out["cloud"][stationary]
                for m in marks:
                    if m <= n_before:
                        errors[m].append(float(abs(cloud_before[:m].mean() - rate)))
                paths.append(out["multiplier"][~stationary])
                walls.append(out["wall_s"])
                per_replica.append(out["per_replica_decisions"])
            recovery = _recovery(paths, before, after)
            configs[name] = {
                "k": k,
                "store": store,
                **{f"rate_error_at_{m}": float(np.mean(errors[m])) for m in marks},
                **{f"rate_error_at_{m}_runs": errors[m] for m in marks},
                **{f"rate_error_at_{m}_sem": _sem(errors[m]) for m in marks},
                **{
                    f"rate_error_at_{m}_decisions_off": float(np.mean(errors[m])) * m for m in marks
                },
                "recovery_decisions": recovery,
                "recovery_decisions_p10_p90": _recovery_interval(paths, before, after, args.seed),
                "recovery_in_tau": None if recovery is None else recovery / tau_after,
                "requests_per_s": round(sum(len(s) for _, s, _ in streams) / sum(walls), 1),
                "per_replica_decisions": per_replica if store == "local" else None,
            }
            print(
                f"{name}: "
                + ", ".join(f"err@{m}={configs[name][f'rate_error_at_{m}']:.5f}" for m in marks)
                + f", recovery={recovery} decisions, {configs[name]['requests_per_s']} req/s",
                flush=True,
            )
    return {
        "settings": {
            "target_rate": rate,
            "tau_decisions": args.tau,
            "eta": eta,
            "tau_after_shift": tau_after,
            "threshold_simple_mix": before,
            "threshold_relation_heavy_mix": after,
            "long_runs": args.long_runs,
            "long_runs_before_shift": args.n,
            "runs": args.runs,
            "runs_before_shift": args.n_short,
            "after_shift": args.after,
            "concurrency": args.concurrency,
            "update": "request",
            "max_batch_size": 32,
            "max_delay_s": 0.002,
            "smooth_decisions": SMOOTH,
            "seed": args.seed,
        },
        "configs": configs,
        "marks": marks,
    }


def goals(result: dict) -> dict:
    """Shared store, K replicas, against one replica (K = 1, local): ratio <= 1.2 per measure.

    Besides the ratio (the verdict), each error measure gets the paired difference per run (the
    configurations see the same streams) with its standard error, and ``within_noise`` when the
    mean difference is within two standard errors of 0; the recovery gets both bootstrap
    intervals. These say whether a missed ratio is more than run-to-run noise; they do not
    change the verdict.
    """
    configs = result["configs"]
    base = configs.get("local_k1")
    if base is None:
        return {}
    out = {}
    for name, c in configs.items():
        if c["store"] != "redis":
            continue
        for measure in [f"rate_error_at_{m}" for m in result["marks"]] + ["recovery_decisions"]:
            one, many = base[measure], c[measure]
            ratio = None if one in (None, 0) or many is None else many / one
            goal = {
                "one_replica": one,
                "measured": many,
                "ratio": ratio,
                "goal_ratio": GOAL_RATIO,
                "met": None if ratio is None else bool(ratio <= GOAL_RATIO),
                "missed_by": None if ratio is None or ratio <= GOAL_RATIO else ratio - GOAL_RATIO,
            }
            if measure == "recovery_decisions":
                goal["one_replica_p10_p90"] = base["recovery_decisions_p10_p90"]
                goal["measured_p10_p90"] = c["recovery_decisions_p10_p90"]
            else:
                diffs = np.subtract(c[f"{measure}_runs"], base[f"{measure}_runs"])
                sem = _sem(diffs.tolist())
                goal["paired_difference"] = float(diffs.mean()) if diffs.size else None
                goal["paired_difference_sem"] = sem
                goal["within_noise"] = None if sem is None else bool(abs(diffs.mean()) <= 2 * sem)
            out[f"{name}.{measure}"] = goal
    return out


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the result written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4], help="replica counts")
    parser.add_argument(
        "--stores", nargs="+", choices=("local", "redis"), default=["local", "redis"]
    )
    parser.add_argument(
        "--long-runs", type=int, default=4, help="runs with --n requests before the shift"
    )
    parser.add_argument("--n", type=int, default=10_000, help="requests before a long run's shift")
    parser.add_argument("--runs", type=int, default=8, help="runs with --n-short before it")
    parser.add_argument("--n-short", type=int, default=1000, help="requests before their shift")
    parser.add_argument("--after", type=int, default=1000, help="requests after the shift")
    parser.add_argument("--concurrency", type=int, default=32, help="Route calls in flight")
    parser.add_argument("--rate", type=float, default=0.3, help="target cloud rate")
    parser.add_argument("--tau", type=float, default=50.0, help="recovery time, in decisions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "replicas.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="replicas-redis-") as workdir:
        server = ManagedRedisServer(Path(workdir)) if "redis" in args.stores else None
        if server is not None:
            server.start()
        try:
            result = asyncio.run(measure(args, server.url if server else None))
        finally:
            if server is not None:
                server.stop()
    result = {
        "command": "benchmarks/replicas.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "wall_s": round(time.perf_counter() - start, 1),
        **result,
    }
    result["goals"] = goals(result)
    ratios = {k: g["ratio"] for k, g in result["goals"].items() if g["ratio"] is not None}
    worst = max(ratios.values(), default=None)
    missed = sorted(k for k, g in result["goals"].items() if g["met"] is False)
    result["goal"] = {
        "text": "with the shared store, K replicas within 1.2x of one replica (K=1, local "
        "store) on the rate error after 1,000 and 10,000 requests and the recovery time",
        "met": None if worst is None else bool(worst <= GOAL_RATIO),
        "worst_ratio": worst,
        "missed_by": None if worst is None or worst <= GOAL_RATIO else worst - GOAL_RATIO,
        "missed": missed,
        "missed_within_noise": [k for k in missed if result["goals"][k].get("within_noise")],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, goal in result["goals"].items():
        print(f"{name}: ratio {goal['ratio']} (goal <= {GOAL_RATIO}, met: {goal['met']})")
    print(f"goal met: {result['goal']['met']} (worst ratio {worst})")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
