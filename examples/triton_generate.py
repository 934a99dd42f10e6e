"""Generate one image through a running Triton (started with `t2i-router triton start`).

    .venv/bin/python examples/triton_generate.py "two red circles left of a blue square" \
        --engine cloud_large --url 127.0.0.1:8001 -o out.png --scale 8
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from t2i_router.errors import RouterError
from t2i_router.imageio import save_png
from t2i_router.triton import TritonClient


async def generate(args: argparse.Namespace) -> None:
    async with TritonClient(args.url) as client:
        images = await client.generate(
            args.engine, [args.prompt], [args.seed], steps=args.steps, timeout_s=args.timeout_s
        )
    print(save_png(images[0], args.output, scale=args.scale))


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate an image through Triton.")
    parser.add_argument("prompt")
    parser.add_argument("--engine", default="edge_small", choices=["edge_small", "cloud_large"])
    parser.add_argument("--url", default="127.0.0.1:8001", help="Triton's gRPC address")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="default: the engine's")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("-o", "--output", default="out.png")
    parser.add_argument("--scale", type=int, default=8)
    try:
        asyncio.run(generate(parser.parse_args()))
    except RouterError as e:  # one line, e.g. "Unavailable: ... is Triton running?"
        sys.exit(f"error: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
