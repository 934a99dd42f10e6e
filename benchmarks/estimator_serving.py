"""Quality-estimator serving latency per prompt, in-process and through Triton, beside the
engines' cost per image.

Run: ``PYTHONPATH=service:clients/python python benchmarks/estimator_serving.py`` (writes
``benchmarks/results/estimator_serving.json``). Each path answers one request of B prompts
(B = 1 and 64, taking turns) end to end, prompt bytes to Q:

- ``in_process``: :class:`t2i_router.estimator.serving.EstimatorServer` (validation, features,
  the MoE in ONNX Runtime), what the Triton model runs;
- ``triton``: the same behind a real tritonserver (``quality_estimator``, Python backend),
  called with tritonclient's gRPC client: adds serialisation, the gRPC hop, the stub's shared
  memory and dynamic batching's queue delay.

The figure is the median over repeats of milliseconds per prompt; fresh prompts each repeat (no
feature cache). The MoE's weights do not change its cost, so an untrained default-config model
(static features) is timed unless ``--model`` names a trained folder. The engines' cost per
image comes from their model cards (measured when the cards were written, on that host).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from t2i_router.estimator.choices import choice_costs, parse_choices
from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE
from t2i_router.estimator.serving import EstimatorServer
from t2i_router.world import sample_prompts

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).parent / "results" / "estimator_serving.json"
PATHS = ("in_process", "triton")


def _time(
    fn: Callable[[list[bytes]], object], prompts: list[bytes], sizes: tuple[int, ...], repeats: int
) -> dict[int, float]:
    """Median ms per prompt at each batch size. The sizes take turns within each repeat, so a
    shared host's load drift hits them alike (timed one after the other, batch 64 came out
    slower than batch 1 in one run here, faster when interleaved). Fresh prompts every call."""
    per_prompt: dict[int, list[float]] = {b: [] for b in sizes}
    start = 0
    for r in range(repeats + 1):  # the first round is a warm-up
        for b in sizes:
            batch = prompts[start : start + b]
            start += b
            t0 = time.perf_counter()
            fn(batch)
            if r:
                per_prompt[b].append((time.perf_counter() - t0) * 1e3 / b)
    return {b: statistics.median(v) for b, v in per_prompt.items()}


def _column(batch: list[bytes]) -> np.ndarray:
    return np.array([[p] for p in batch], dtype=np.object_)  # (B, 1), as Triton hands them


def engine_costs(models_dir: Path, choices: tuple[str, ...]) -> dict:
    """Per engine: ms per image at batch 1 and 32 and GFLOPs per image (its model card); per
    choice: GFLOPs and seconds per image (``choice_costs``)."""
    engines = {}
    for engine in sorted({c.split("@")[0] for c in choices}):
        cost = json.loads((models_dir / engine / "model_card.json").read_text())["cost"]
        engines[engine] = {
            "default_steps": cost["default_steps"],
            "gflops_per_image": round(cost["flops_per_image"] / 1e9, 4),
            **{
                f"{k}_ms_per_image": round(v * 1e3, 2)
                for k, v in cost["latency_s_per_image"].items()
            },
            "card_threads": cost.get("threads"),
        }
    per_choice = {
        name: {"gflops": c.gflops, "ms_per_image_batch_32": round(c.seconds * 1e3, 2)}
        for name, c in choice_costs(parse_choices(choices), models_dir).items()
    }
    return {"engines": engines, "choices": per_choice}


def _triton_path(model_dir: Path, models_dir: Path, threads: int, workdir: Path, stack):
    import tritonclient.grpc as grpcclient

    from t2i_router.triton import ManagedTritonServer, TritonServerConfig
    from t2i_router.triton.repository import (
        ESTIMATOR_MODEL,
        EstimatorModelSettings,
        write_estimator_model,
    )

    repo = workdir / "repo"
    write_estimator_model(repo, model_dir, models_dir, EstimatorModelSettings(threads=threads))
    config = TritonServerConfig(model_repository=repo, log_path=workdir / "tritonserver.log")
    server = stack.enter_context(ManagedTritonServer(config))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stack.callback(client.close)

    def fn(batch: list[bytes]) -> np.ndarray:
        column = _column(batch)
        inp = grpcclient.InferInput("PROMPT", list(column.shape), "BYTES")
        inp.set_data_from_numpy(column)
        return client.infer(ESTIMATOR_MODEL, [inp]).as_numpy("Q")

    return fn


def run(
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 20,
    threads: int = 1,
    paths: tuple[str, ...] = PATHS,
    model_dir: str | None = None,
    models_dir: str | Path = ROOT / "models",
) -> dict:
    """Time each path at each batch size; returns the JSON-ready results."""
    import contextlib

    models_dir = Path(models_dir)
    load_before = os.getloadavg()[0]
    need = sum(batch_sizes) * (repeats + 1)
    texts = list(dict.fromkeys(t for t, _ in sample_prompts(need * 2, seed=321)))[:need]
    prompts = [t.encode() for t in texts]
    workdir = Path(tempfile.mkdtemp(prefix="estimator-serving-"))
    if model_dir is None:
        torch.manual_seed(0)
        moe = TokenSelectionMoE(EstimatorConfig(features="static")).eval()
        model_path = moe.save_pretrained(workdir / "estimator")
    else:
        model_path = Path(model_dir)
    server = EstimatorServer.load(model_path, threads=threads)
    results: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        fns: dict[str, Callable] = {}
        for name in paths:
            if name == "in_process":
                fns[name] = lambda batch: server.run([_column(batch)])[0]
            elif name == "triton":
                fns[name] = _triton_path(model_path, models_dir, threads, workdir, stack)
            else:
                raise ValueError(f"unknown path {name!r}, expected one of {PATHS}")
        for name, fn in fns.items():
            timed = _time(fn, prompts, batch_sizes, repeats)
            results[name] = {f"batch_{b}_ms_per_prompt": round(v, 4) for b, v in timed.items()}
    return {
        "command": "PYTHONPATH=service:clients/python python benchmarks/estimator_serving.py",
        "threads": threads,
        "repeats": repeats,
        "host": platform.node(),
        "cpu_count": len(os.sched_getaffinity(0)),
        # Shared hosts inflate every figure; ratios within one run hold better.
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "features": server.config.features,
        "choices": list(server.choices),
        "metrics": list(server.metrics),
        "model": str(model_dir) if model_dir else "untrained default config (static features)",
        "ms_per_prompt": results,
        "engine_costs": engine_costs(models_dir, server.choices),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--model", help="a trained estimator folder (default: untrained, static)")
    p.add_argument("--models-dir", default=str(ROOT / "models"), help="engines' model cards")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    paths = tuple(s for s in args.paths.split(",") if s)
    report = run(sizes, args.repeats, args.threads, paths, args.model, args.models_dir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("ms_per_prompt", "load_average_1m")}, indent=2))


if __name__ == "__main__":
    main()
