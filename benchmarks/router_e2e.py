"""End to end through the router against Triton called directly: overhead and images/s.

    .venv/bin/python benchmarks/router_e2e.py                      # writes benchmarks/results/
    .venv/bin/python benchmarks/router_e2e.py --estimator models/quality_estimator

A managed tritonserver serves the engines of ``triton_repo/`` (or ``--triton-url`` names a
running one); the router runs in this process on a free loopback port with the in-process
estimator: the trained one when ``--estimator`` names a folder, otherwise the token-selection
MoE with seeded, untrained weights (`router_load.make_estimator`; the JSON says which). Two
measurements, both on the same prompts and seeds each way:

- overhead on an edge generation: ``--overhead-requests`` one-at-a-time calls, alternating
  Generate with target EDGE through the router (gRPC, micro-batcher, policy, PNG encode and
  decode) and ``edge_small`` called straight through the Triton client with the same steps.
  The ratio is the median over prompts of router latency / direct latency (paired, so drift of
  a shared host cancels); the issue's goal is <= 1.03;
- end-to-end images/s at each ``--rates`` target cloud rate: lambda and eta set for the rate
  (SetBudget, calibrated as `t2i-router demo` does), ``--requests`` AUTO Generate calls with
  ``--concurrency`` in flight, then the same prompts and seeds sent straight to Triton on
  the choice (engine and steps) the router picked for each, at the same concurrency, so both
  sides make exactly the same images.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
from bench_io import host_info, write_result
from router_load import make_estimator

from t2i_router.router.server import RouterConfig, RouterService, build_router
from t2i_router.triton import ManagedTritonServer, TritonClient, TritonServerConfig, connect
from t2i_router.world import sample_prompts
from t2i_router_client import router_pb2, router_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
GOAL_OVERHEAD_RATIO = 1.03


async def overhead(stub, client, edge, prompts: list[str], seed0: int) -> dict:
    """Paired one-at-a-time latencies: router (target EDGE) vs Triton's edge engine directly."""
    routed, direct = [], []
    for i, prompt in enumerate(prompts):
        seed = seed0 + i
        order = ("router", "direct") if i % 2 == 0 else ("direct", "router")
        for side in order:
            t0 = time.perf_counter()
            if side == "router":
                request = router_pb2.GenerateRequest(
                    prompt=prompt, seed=seed, target=router_pb2.TARGET_EDGE
                )
                await stub.Generate(request, timeout=120)
                routed.append(time.perf_counter() - t0)
            else:
                await client.generate(edge.engine, [prompt], [seed], steps=edge.steps)
                direct.append(time.perf_counter() - t0)
    r, d = np.asarray(routed), np.asarray(direct)
    ratios = r / d
    return {
        "requests": len(prompts),
        "engine": edge.name,
        "router_p50_ms": round(float(np.median(r)) * 1e3, 2),
        "direct_p50_ms": round(float(np.median(d)) * 1e3, 2),
        "ratio_median": round(float(np.median(ratios)), 4),
        "ratio_of_medians": round(float(np.median(r) / np.median(d)), 4),
        "overhead_ms_median": round(float(np.median(r - d)) * 1e3, 2),
        "goal_ratio": GOAL_OVERHEAD_RATIO,
        "goal_met": bool(np.median(ratios) <= GOAL_OVERHEAD_RATIO),
    }


async def _pool(n: int, concurrency: int, one) -> tuple[float, int]:
    """Runs ``one(i)`` for i < n with ``concurrency`` in flight; (wall seconds, errors)."""
    next_i, errors = 0, 0

    async def worker() -> None:
        nonlocal next_i, errors
        while next_i < n:
            i, next_i = next_i, next_i + 1
            try:
                await one(i)
            except Exception:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, errors


async def throughput(
    stub, client, calibration, prompts: list[str], seed0: int, rate: float, c: int
) -> dict:
    """AUTO through the router at ``rate``, then the same choices straight to Triton."""
    await stub.SetBudget(
        router_pb2.SetBudgetRequest(
            target_rate=rate, eta=calibration.eta, multiplier=calibration.multiplier
        )
    )
    chosen: dict[int, tuple[str, int]] = {}

    async def routed(i: int) -> None:
        request = router_pb2.GenerateRequest(prompt=prompts[i], seed=seed0 + i)
        reply = await stub.Generate(request, timeout=600)
        chosen[i] = (reply.decision.engine, reply.decision.steps)

    async def direct(i: int) -> None:
        engine, steps = chosen[i]
        await client.generate(engine, [prompts[i]], [seed0 + i], steps=steps)

    n = len(prompts)
    router_s, router_errors = await _pool(n, c, routed)
    done = sorted(chosen)
    direct_s, direct_errors = await _pool(len(done), c, lambda k: direct(done[k]))
    cloud = sum(engine == "cloud_large" for engine, _ in chosen.values())
    budget = await stub.GetBudget(router_pb2.GetBudgetRequest())
    return {
        "target_rate": rate,
        "requests": n,
        "concurrency": c,
        "cloud_share": round(cloud / max(len(chosen), 1), 4),
        "router_running_rate": round(budget.running_rate, 4),
        "errors": router_errors + direct_errors,
        "router_images_per_s": round(len(chosen) / router_s, 3),
        "direct_images_per_s": round(len(done) / direct_s, 3),
        "ratio": round((len(chosen) / router_s) / (len(done) / direct_s), 4),
        "calibrated_multiplier": round(calibration.multiplier, 6),
        "eta": round(calibration.eta, 6),
    }


async def run(args: argparse.Namespace, triton_url: str) -> dict:
    estimator, description = make_estimator(args.estimator, args.features)
    config = RouterConfig(port=0, warm_start_prompts=64, models_dir=ROOT / "models")
    result: dict = {
        "command": "benchmarks/router_e2e.py " + " ".join(args.argv),
        "estimator": description,
        "host": host_info(),
    }
    async with TritonClient(triton_url) as client:
        router = build_router(config, estimator, client)
        service = RouterService(config, router)
        port = await service.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                edge = router.edge_default
                warm = [t for t, _ in sample_prompts(2, seed=1)]
                await overhead(stub, client, edge, warm, seed0=0)  # first calls load lazily
                prompts = [t for t, _ in sample_prompts(args.overhead_requests, seed=2)]
                result["overhead"] = await overhead(stub, client, edge, prompts, seed0=100)
                result["throughput"] = {}
                for k, rate in enumerate(args.rates):
                    batch = [t for t, _ in sample_prompts(args.requests, seed=10 + k)]
                    # lambda* and eta on the policy's own cloud share (the window holds the
                    # warm start's prompts and the traffic so far)
                    calibration = router.calibrate(rate, max(4.0, args.requests / 8), 0.05)
                    result["throughput"][str(rate)] = await throughput(
                        stub, client, calibration, batch, 1000 * (k + 1), rate, args.concurrency
                    )
        finally:
            await service.stop()
            estimator.close()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", help="a trained estimator folder (default: untrained MoE)")
    parser.add_argument("--features", choices=("static", "contextual"), default="static")
    parser.add_argument("--triton-url", help="host:port of a running Triton (default: start one)")
    parser.add_argument("--overhead-requests", type=int, default=40, help="paired edge calls")
    parser.add_argument("--requests", type=int, default=48, help="AUTO calls per target rate")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--out", default=None, help="JSON path (default: benchmarks/results/router_e2e-TIME.json)"
    )
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.triton_url:
        result = asyncio.run(run(args, connect(args.triton_url).grpc_url))
    else:
        config = TritonServerConfig(model_repository=ROOT / "triton_repo", startup_timeout_s=400)
        with ManagedTritonServer(config) as triton:
            result = asyncio.run(run(args, triton.grpc_url))
    write_result(result, args.out, "router_e2e")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
