"""Load generator: the engines through a real tritonserver, dynamic batching on and off.

For each engine and concurrency (1, 8, 32 by default) it sends ``--requests`` single-image
requests from that many concurrent clients and records images/s and p50/p99 latency, once for
each queue delay with dynamic batching and once without it; then it measures the same engine
in-process at batch 1 (ONNX Runtime and torch) for the Triton overhead and runtime ratios.

    .venv/bin/python benchmarks/triton_load.py
    # writes benchmarks/results/triton_load.json and docs/triton_benchmark.md

The JSON and the table name what was measured: each engine's weights (SHA-256 of
``model.safetensors``), its sampler, steps and guidance (the requests use the engine's defaults),
and the git commit of the checkout.

Goals (issue 4): >= 2.5x throughput at concurrency 32 with batching; Triton latency at
concurrency 1 <= 1.3x the in-process engine at batch 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from t2i_router.engines import Engine, EngineConfig, TextEncoder
from t2i_router.engines.engine import CONFIG_FILE, WEIGHTS_FILE
from t2i_router.engines.export import OnnxDenoiser
from t2i_router.engines.serving import ensure_onnx
from t2i_router.triton import ManagedTritonServer, TritonClient, TritonServerConfig
from t2i_router.triton.repository import (
    EngineModelSettings,
    write_engine_model,
    write_text_encoder_model,
)
from t2i_router.world import sample_prompts

log = logging.getLogger("triton_load")
ROOT = Path(__file__).resolve().parents[1]
BLS_SUFFIX = "_bls_encoder"


async def _load(url: str, model: str, prompts: list[str], concurrency: int) -> dict:
    latencies: list[float] = []
    queue = list(enumerate(prompts))

    async def worker(client: TritonClient) -> None:
        while queue:
            i, prompt = queue.pop()
            t0 = time.perf_counter()
            await client.generate(model, [prompt], [i])
            latencies.append(time.perf_counter() - t0)

    async with TritonClient(url) as client:
        await client.generate(model, prompts[:1], [0])  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        stats = await client.statistics(model)
    lat = np.array(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(prompts),
        "images_per_s": round(len(prompts) / wall, 3),
        "p50_latency_s": round(float(np.percentile(lat, 50)), 4),
        "p99_latency_s": round(float(np.percentile(lat, 99)), 4),
        "executions_total": stats.execution_count,
        "inferences_total": stats.inference_count,
    }


def _in_process(models_dir: Path, name: str, prompts: list[str], repeats: int) -> dict:
    encoder = TextEncoder()
    torch_engine = Engine.load(models_dir / name, encoder)
    onnx_engine = Engine(torch_engine.config, OnnxDenoiser(ensure_onnx(models_dir / name)), encoder)
    out = {}
    for label, engine in (("onnxruntime", onnx_engine), ("torch", torch_engine)):
        engine.generate(prompts[:1], [0])
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            engine.generate([prompts[i % len(prompts)]], [i])
            times.append(time.perf_counter() - t0)
        out[f"{label}_batch1_p50_latency_s"] = round(float(np.median(times)), 4)
    return out


def engine_record(engine_dir: Path) -> dict:
    """What the served engine is: its weights' SHA-256 and how it samples by default."""
    config = EngineConfig.from_dict(json.loads((engine_dir / CONFIG_FILE).read_text()))
    digest = hashlib.sha256((engine_dir / WEIGHTS_FILE).read_bytes()).hexdigest()
    return {"weights_sha256": digest, **config.sampling()}


def git_commit() -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it; None outside
    a git checkout."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def run(args: argparse.Namespace) -> dict:
    models_dir = Path(args.models_dir).resolve()
    prompts = [t for t, _ in sample_prompts(args.requests, seed=7)]
    for name in args.models:
        ensure_onnx(models_dir / name)
    # (label, dynamic batching, queue delay, text encoder): the text encoder inline in each
    # engine, or one shared text_encoder model called through BLS, at the first delay.
    variants = [(f"batching_delay_{d}us", True, d, "inline") for d in args.queue_delays_us]
    first = args.queue_delays_us[0]
    variants.append((f"batching_delay_{first}us{BLS_SUFFIX}", True, first, "bls"))
    variants.append(("no_batching", False, 0, "inline"))
    result: dict = {
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "commit": git_commit(),
        "engines": {name: engine_record(models_dir / name) for name in args.models},
        "triton": {},
        "in_process": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, batching, delay, encoder in variants:
            repo = Path(tmp) / label
            settings = EngineModelSettings(
                max_batch_size=64,
                max_queue_delay_us=delay,
                dynamic_batching=batching,
                text_encoder=encoder,
            )
            for name in args.models:
                write_engine_model(repo, name, models_dir / name, settings)
            if encoder == "bls":
                write_text_encoder_model(repo)
            config = TritonServerConfig(model_repository=repo, startup_timeout_s=300)
            with ManagedTritonServer(config) as server:
                for name in args.models:
                    for c in args.concurrency:
                        row = asyncio.run(_load(server.grpc_url, name, prompts, c))
                        result["triton"].setdefault(name, {}).setdefault(label, []).append(row)
                        log.info("%s %s c=%d: %s", name, label, c, row)
    for name in args.models:
        result["in_process"][name] = _in_process(models_dir, name, prompts, args.repeats)
    result["summary"] = summarize(result)
    return result


def summarize(result: dict) -> dict:
    summary = {}
    for name, by_variant in result["triton"].items():
        batching = {
            k: v for k, v in by_variant.items() if k.startswith("batching") and BLS_SUFFIX not in k
        }
        top_c = max(r["concurrency"] for r in by_variant["no_batching"])

        def at(rows, c):
            return next(r for r in rows if r["concurrency"] == c)

        best = max(batching, key=lambda k: at(batching[k], top_c)["images_per_s"])
        speedup = (
            at(batching[best], top_c)["images_per_s"]
            / at(by_variant["no_batching"], top_c)["images_per_s"]
        )
        c1 = at(batching[best], 1)["p50_latency_s"]
        inproc = result["in_process"][name]
        bls = next((k for k in by_variant if k.endswith(BLS_SUFFIX)), None)
        bls_ratio = None
        if bls is not None:
            twin = by_variant[bls.removesuffix(BLS_SUFFIX)]  # same delay, inline encoder
            bls_ratio = round(
                at(by_variant[bls], top_c)["images_per_s"] / at(twin, top_c)["images_per_s"], 2
            )
        summary[name] = {
            "best_queue_delay": best,
            f"batching_speedup_at_c{top_c}": round(speedup, 2),
            "triton_c1_over_in_process_batch1": round(
                c1 / inproc["onnxruntime_batch1_p50_latency_s"], 2
            ),
            f"bls_encoder_over_inline_throughput_at_c{top_c}": bls_ratio,
            "onnxruntime_over_torch_latency": round(
                inproc["onnxruntime_batch1_p50_latency_s"] / inproc["torch_batch1_p50_latency_s"],
                2,
            ),
        }
    return summary


def table(result: dict) -> str:
    lines = ["| engine | weights (sha256) | sampler | steps | guidance |", "|---|---|---|---|---|"]
    for name, e in result["engines"].items():
        lines.append(
            f"| {name} | {e['weights_sha256'][:16]} | {e['sampler']} | {e['steps']} | "
            f"{e['guidance']} |"
        )
    lines += [
        "",
        "| engine | variant | concurrency | images/s | p50 s | p99 s |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_variant in result["triton"].items():
        for variant, rows in by_variant.items():
            for r in rows:
                lines.append(
                    f"| {name} | {variant} | {r['concurrency']} | {r['images_per_s']} | "
                    f"{r['p50_latency_s']} | {r['p99_latency_s']} |"
                )
    lines += ["", "| engine | summary |", "|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | " + ", ".join(f"{k}: {v}" for k, v in s.items()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["edge_small", "cloud_large"])
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--queue-delays-us", nargs="+", type=int, default=[2000, 20000])
    parser.add_argument("--requests", type=int, default=64, help="per engine and concurrency")
    parser.add_argument("--repeats", type=int, default=10, help="in-process batch-1 repeats")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/triton_load.json"))
    parser.add_argument("--table", default=str(ROOT / "docs/triton_benchmark.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(
            "# Engines through Triton\n\nRegenerate: `.venv/bin/python benchmarks/triton_load.py`"
            f" (this run: `{' '.join(sys.argv[1:] if argv is None else argv) or 'defaults'}`,"
            f" at commit {result['commit']})."
            "\n\n" + table(result)
        )
    print(table(result))
    return result


if __name__ == "__main__":
    main()
