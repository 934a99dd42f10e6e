"""Call every rpc of the t2i-router with the blocking gRPC client.

Needs only the stubs generated from proto/t2i_router/v1/router.proto (the `t2i_router_client`
package) and grpcio. Start a router first (`t2i-router serve`), then:

    python clients/python/examples/sync_client.py --address 127.0.0.1:50051 --out-dir out/
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

from t2i_router_client import router_pb2, router_pb2_grpc

PROMPTS = [
    "a red circle on a white background",
    "three small blue squares above a large green triangle on black",
]


def metadata() -> tuple[tuple[str, str], ...]:
    """A bearer token from T2I_ROUTER_TOKEN, when the router asks for one."""
    token = os.environ.get("T2I_ROUTER_TOKEN")
    return (("authorization", f"Bearer {token}"),) if token else ()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--out-dir", default="out", help="where the PNGs go")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="deadline of each call")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = metadata()

    with grpc.insecure_channel(args.address) as channel:
        router = router_pb2_grpc.RouterStub(channel)

        # Decisions only; a dry run does not count toward the cloud budget.
        routed = router.Route(
            router_pb2.RouteRequest(prompts=PROMPTS, dry_run=True),
            timeout=args.timeout_s,
            metadata=md,
        )
        for prompt, d in zip(PROMPTS, routed.decisions, strict=True):
            print(
                f"route    {d.choice:16} score {d.score:+.4f}  lambda {d.multiplier:.4f}  {prompt}"
            )

        # One image, routed by the estimator and the budget.
        reply = router.Generate(
            router_pb2.GenerateRequest(prompt=PROMPTS[0], seed=1),
            timeout=args.timeout_s,
            metadata=md,
        )
        (out / "generate.png").write_bytes(reply.png)
        d = reply.decision
        print(f"generate {d.choice:16} counted {d.counted}  total {d.timings.total_ms:.1f} ms")

        # Many images; each result streams back as soon as it is ready, with its index.
        batch = router_pb2.GenerateBatchRequest(
            requests=[router_pb2.GenerateRequest(prompt=p, seed=i) for i, p in enumerate(PROMPTS)]
        )
        for result in router.GenerateBatch(batch, timeout=args.timeout_s, metadata=md):
            if result.HasField("error"):
                print(
                    f"batch    #{result.index} failed: {result.error.code} {result.error.message}"
                )
                continue
            (out / f"batch-{result.index}.png").write_bytes(result.result.png)
            print(f"batch    #{result.index} {result.result.decision.choice}")

        budget = router.GetBudget(
            router_pb2.GetBudgetRequest(), timeout=args.timeout_s, metadata=md
        )
        print(
            f"budget   target {budget.target_rate:.3f}  running {budget.running_rate:.3f}  "
            f"lambda {budget.multiplier:.4f}  decisions {budget.decisions}"
        )


if __name__ == "__main__":
    main()
