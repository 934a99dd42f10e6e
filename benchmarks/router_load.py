"""Route-only load on a real grpc.aio router: latency and throughput at each concurrency.

    .venv/bin/python benchmarks/router_load.py                       # writes benchmarks/results/
    .venv/bin/python benchmarks/router_load.py --estimator models/quality_estimator

The router runs in this process on a free loopback port with the in-process estimator: the
trained one when ``--estimator`` names a folder, otherwise the token-selection MoE of the default
architecture with seeded, untrained weights (routing latency does not depend on the weights; the
decisions then mean nothing and the JSON says which it was). Route calls never reach an engine,
so no Triton is started. Two loads:

- closed loop: ``--requests`` one-prompt Route calls (dry run) with C in flight, for each C of
  ``--concurrency``: p50/p99 latency and requests/s;
- open loop: calls arriving at ``--rate`` per second for ``--duration-s`` (the issue's goal:
  p50 <= 5 ms and p99 <= 20 ms at 100 req/s on a 2-core host).

Latency is measured at the client, so it includes gRPC, the micro-batcher's wait
(``--max-delay-s``), the estimator and the policy.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
from bench_io import host_info, write_result

from t2i_router.errors import Unavailable
from t2i_router.router.estimator import InProcessEstimator
from t2i_router.router.server import RouterConfig, RouterService, build_router
from t2i_router.world import sample_prompts
from t2i_router_client import router_pb2, router_pb2_grpc

GOAL_P50_MS, GOAL_P99_MS, GOAL_RATE = 5.0, 20.0, 100.0


class NoEngines:
    """Route never generates; a call here would be a bug in the benchmark."""

    async def generate(self, model, prompts, seeds, steps=None, guidance=None, timeout_s=None):
        raise Unavailable("the route-only benchmark serves no engine")

    async def is_model_ready(self, model, timeout_s=None) -> bool:
        return True


def make_estimator(folder: str | None, features: str) -> tuple[InProcessEstimator, str]:
    import torch

    from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE
    from t2i_router.estimator.quality import QualityEstimator

    if folder:
        return InProcessEstimator(QualityEstimator.load(folder)), f"trained ({folder})"
    torch.manual_seed(0)
    model = TokenSelectionMoE(EstimatorConfig(features=features))
    return InProcessEstimator(QualityEstimator(model)), f"untrained seeded MoE ({features})"


def summary(latencies_s: list[float], wall_s: float, errors: int) -> dict:
    ms = np.asarray(latencies_s) * 1e3
    return {
        "requests": len(latencies_s) + errors,
        "errors": errors,
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
        "requests_per_s": round(len(latencies_s) / wall_s, 1),
    }


async def timed_call(
    call: Callable[[], Awaitable[object]], latencies: list[float]
) -> grpc.StatusCode:
    """Makes one call (``call()`` starts it); its latency is appended when it succeeds. Returns
    its status (OK, or the code the router answered)."""
    start = time.perf_counter()
    try:
        await call()
    except grpc.aio.AioRpcError as e:
        return e.code()
    latencies.append(time.perf_counter() - start)
    return grpc.StatusCode.OK


async def timed_route(
    stub, prompt: str, latencies: list[float], dry_run: bool = True, timeout_s: float = 60.0
) -> grpc.StatusCode:
    """One one-prompt Route call, timed (`timed_call`)."""
    request = router_pb2.RouteRequest(prompts=[prompt], dry_run=dry_run)
    return await timed_call(lambda: stub.Route(request, timeout=timeout_s), latencies)


async def closed_loop(stub, prompts: list[str], n: int, concurrency: int) -> dict:
    latencies, errors, next_i = [], 0, 0

    async def worker() -> None:
        nonlocal errors, next_i
        while next_i < n:
            i, next_i = next_i, next_i + 1
            code = await timed_route(stub, prompts[i % len(prompts)], latencies)
            errors += code != grpc.StatusCode.OK

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(latencies, time.perf_counter() - start, errors)


async def open_loop(stub, prompts: list[str], rate: float, duration_s: float) -> dict:
    latencies, errors = [], 0

    async def one(i: int) -> None:
        nonlocal errors
        code = await timed_route(stub, prompts[i % len(prompts)], latencies)
        errors += code != grpc.StatusCode.OK

    n = int(rate * duration_s)
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    out = summary(latencies, time.perf_counter() - start, errors)
    out["offered_rate"] = rate
    return out


async def run(args: argparse.Namespace) -> dict:
    estimator, description = make_estimator(args.estimator, args.features)
    config = RouterConfig(
        port=0, warm_start_prompts=64, max_delay_s=args.max_delay_s, target_rate=0.3
    )
    service = RouterService(config, build_router(config, estimator, NoEngines()))
    port = await service.start()
    prompts = [t for t, _ in sample_prompts(512, seed=4242)]
    result: dict = {
        "command": "benchmarks/router_load.py " + " ".join(args.argv),
        "estimator": description,
        "host": host_info(),
        "max_delay_s": args.max_delay_s,
        "closed_loop": {},
    }
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            await closed_loop(stub, prompts, 20, 1)  # warm-up: first calls load lazily
            for c in args.concurrency:
                result["closed_loop"][str(c)] = await closed_loop(stub, prompts, args.requests, c)
            result["open_loop"] = await open_loop(stub, prompts, args.rate, args.duration_s)
    finally:
        await service.stop()
    ol = result["open_loop"]
    result["goal"] = {
        "p50_ms": GOAL_P50_MS,
        "p99_ms": GOAL_P99_MS,
        "at_rate": GOAL_RATE,
        "met": args.rate >= GOAL_RATE
        and ol["errors"] == 0
        and ol["p50_ms"] <= GOAL_P50_MS
        and ol["p99_ms"] <= GOAL_P99_MS,
    }
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", help="a trained estimator folder (default: untrained MoE)")
    parser.add_argument("--features", choices=("static", "contextual"), default="static")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=400, help="calls per concurrency")
    parser.add_argument("--rate", type=float, default=GOAL_RATE, help="open-loop calls per second")
    parser.add_argument("--duration-s", type=float, default=10.0, help="open-loop duration")
    parser.add_argument("--max-delay-s", type=float, default=0.0, help="batcher's wait")
    parser.add_argument(
        "--out", default=None, help="JSON path (default: benchmarks/results/router_load-TIME.json)"
    )
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    result = asyncio.run(run(args))
    write_result(result, args.out, "router_load")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
