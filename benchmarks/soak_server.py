"""A router in a process of its own, so that a load test measures the server alone.

    .venv/bin/python benchmarks/soak_server.py --max-queue 64
    {"port": 41233, "metrics_port": 40111, "pid": 12345, "estimator": "..."}

The router of `router_load.py`: the in-process estimator (the untrained seeded MoE, or the
trained one of ``--estimator``), no engines (Route only; a Generate answers UNAVAILABLE) unless
``--triton-url`` names a running Triton's gRPC address, and Prometheus metrics on a free loopback
port. It prints one JSON line once it serves, so the load generator (`router_soak.py`, in
another process) reads the server's own resident memory and descriptors from /proc/PID, and its
asyncio tasks, calls in flight, queue depth and request counts from /metrics (`router.metrics`).
It stops gracefully on SIGTERM or SIGINT, and when its stdin closes, so it cannot outlive the
process that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from contextlib import AsyncExitStack
from pathlib import Path

from router_load import NoEngines, make_estimator

from t2i_router.router.metrics import RouterMetrics
from t2i_router.router.server import RouterConfig, RouterService, build_router
from t2i_router.router.types import Limits

ROOT = Path(__file__).resolve().parents[1]


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:  # EOF: the parent is gone or done
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    estimator, description = make_estimator(args.estimator, args.features)
    config = RouterConfig(
        port=0,
        metrics_port=0,
        models_dir=ROOT / "models",
        warm_start_prompts=64,
        max_delay_s=args.max_delay_s,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        limits=Limits(max_concurrent_per_client=args.max_concurrent_per_client),
        target_rate=0.3,
        grace_s=5.0,
    )
    metrics = RouterMetrics()
    async with AsyncExitStack() as stack:  # unwinds in reverse: service, estimator, client
        engines = NoEngines()
        if args.triton_url:
            from t2i_router.triton import TritonClient

            engines = await stack.enter_async_context(TritonClient(args.triton_url))
        stack.callback(estimator.close)
        service = RouterService(config, build_router(config, estimator, engines, metrics), metrics)
        stack.push_async_callback(service.stop)
        port = await service.start()
        if not await service.wait_serving(60):
            raise SystemExit("the router did not become SERVING in 60 s")
        ready = {
            "port": port,
            "metrics_port": service.metrics_port,
            "pid": os.getpid(),
            "estimator": description,
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", help="a trained estimator folder (default: untrained MoE)")
    parser.add_argument("--features", choices=("static", "contextual"), default="static")
    parser.add_argument("--max-queue", type=int, default=1024, help="prompts queued (1024)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="prompts per batch (32)")
    parser.add_argument("--max-delay-s", type=float, default=0.002, help="batcher's wait")
    parser.add_argument(
        "--max-concurrent-per-client", type=int, default=16, help="calls in flight per client"
    )
    parser.add_argument("--triton-url", help="a running Triton's gRPC host:port (default: none)")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
