"""Many concurrent Generate calls with grpc.aio, then the budget they moved.

Start a router first (`t2i-router serve`), then:

    python clients/python/examples/async_client.py --address 127.0.0.1:50051 --n 32
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import time

import grpc

from t2i_router_client import router_pb2, router_pb2_grpc

PROMPTS = [
    "a red circle",
    "two yellow triangles on a gray background",
    "a big purple square left of three small white circles on black",
    "four green triangles and a blue circle",
]


async def run(address: str, n: int, concurrency: int, timeout_s: float) -> None:
    token = os.environ.get("T2I_ROUTER_TOKEN")
    md = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(address) as channel:
        router = router_pb2_grpc.RouterStub(channel)
        slots = asyncio.Semaphore(concurrency)
        choices: collections.Counter[str] = collections.Counter()
        failures: collections.Counter[str] = collections.Counter()

        async def one(i: int) -> None:
            request = router_pb2.GenerateRequest(prompt=PROMPTS[i % len(PROMPTS)], seed=i)
            async with slots:
                try:
                    reply = await router.Generate(request, timeout=timeout_s, metadata=md)
                except grpc.aio.AioRpcError as e:
                    failures[e.code().name] += 1
                    return
            choices[reply.decision.choice] += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
        budget = await router.GetBudget(router_pb2.GetBudgetRequest(), metadata=md)
    print(f"{n} calls in {elapsed:.2f} s ({n / elapsed:.1f} images/s)")
    print("choices:", dict(choices), "failures:", dict(failures))
    print(f"running rate {budget.running_rate:.3f} (target {budget.target_rate:.3f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--n", type=int, default=32, help="calls to make")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight at once")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="deadline of each call")
    args = parser.parse_args(argv)
    asyncio.run(run(args.address, args.n, args.concurrency, args.timeout_s))


if __name__ == "__main__":
    main()
