"""Quality-estimator latency per prompt: contextual vs static features, torch vs ONNX Runtime.

Run: ``PYTHONPATH=service python benchmarks/estimator_latency.py`` (writes
``benchmarks/results/estimator_latency.json``). Each path runs prompts -> Q end to end
(tokenizer, features, MoE) at batch 1 and 64 on fresh prompts (no feature cache); the figure is
the median over repeats of milliseconds per prompt. Paths:

- ``static/torch``, ``static/onnxruntime``: word-table lookup, MoE in torch or ORT;
- ``contextual/torch``: MiniLM and the MoE in torch (the TextEncoder of the engines);
- ``contextual/onnxruntime``: MiniLM exported to ONNX (fp32) and the MoE, both in ORT;
- ``contextual/onnxruntime-int8``: the same MiniLM graph after ``quantize_dynamic`` (QInt8).

The MoE's weights do not change its cost, so an untrained default-config model is timed unless
``--model`` names a trained folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from t2i_router.engines.text_encoder import default_encoder_path
from t2i_router.estimator.features import TokenFeatures
from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE
from t2i_router.estimator.quality import export_onnx
from t2i_router.world import sample_prompts

DEFAULT_OUT = Path(__file__).parent / "results" / "estimator_latency.json"


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _MiniLM(torch.nn.Module):
    """forward(ids, mask) -> last_hidden_state (positional HF calls fail on use_cache)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)


def export_minilm(encoder, path: Path, int8: bool) -> Path:
    """MiniLM as ONNX (dynamic batch), optionally int8 by ``quantize_dynamic``."""
    ids = torch.ones(2, encoder.config.max_tokens, dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _MiniLM(encoder.model.eval()),
            (ids, ids),
            str(path),
            input_names=["ids", "mask"],
            output_names=["hidden"],
            dynamic_axes={"ids": {0: "b"}, "mask": {0: "b"}, "hidden": {0: "b"}},
            opset_version=18,
            dynamo=False,
        )
    if not int8:
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(path.stem + "-int8.onnx")
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    return out


def _time(fn: Callable[[list[str]], object], batches: list[list[str]]) -> float:
    """Median ms per prompt over the batches (the first is a warm-up)."""
    fn(batches[0])
    per_prompt = []
    for batch in batches[1:]:
        t0 = time.perf_counter()
        fn(batch)
        per_prompt.append((time.perf_counter() - t0) * 1e3 / len(batch))
    return statistics.median(per_prompt)


def run(
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 20,
    threads: int = 1,
    paths: tuple[str, ...] = (
        "static/torch",
        "static/onnxruntime",
        "contextual/torch",
        "contextual/onnxruntime",
        "contextual/onnxruntime-int8",
    ),
    model_dir: str | None = None,
) -> dict:
    """Time each path at each batch size; returns the JSON-ready results."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    need = max(batch_sizes) * (repeats + 1)
    prompts = list(dict.fromkeys(t for t, _ in sample_prompts(need * 2, seed=123)))[:need]
    workdir = Path(tempfile.mkdtemp(prefix="estimator-latency-"))
    static = TokenFeatures("static")
    contextual = TokenFeatures("contextual") if any(p.startswith("cont") for p in paths) else None
    moe = {}
    for kind in ("static", "contextual"):
        if model_dir:
            moe[kind] = TokenSelectionMoE.from_pretrained(model_dir)
        else:
            moe[kind] = TokenSelectionMoE(EstimatorConfig(features=kind)).eval()
    moe_ort = {
        k: _ort_session(export_onnx(m, workdir / f"moe-{k}.onnx"), threads) for k, m in moe.items()
    }

    def torch_path(features, model):
        def fn(batch):
            tokens, mask = features.encode(batch)
            return model.predict(torch.from_numpy(tokens), torch.from_numpy(mask)).numpy()

        return fn

    def ort_static(batch):
        tokens, mask = static.encode(batch)
        return moe_ort["static"].run(None, {"tokens": tokens, "mask": mask})[0]

    def ort_contextual(session):
        def fn(batch):
            encoded = static._tokenizer.encode_batch(batch)  # the same fast tokenizer as MiniLM's
            ids = np.array([e.ids for e in encoded], np.int64)  # (B, L)
            mask = np.array([e.attention_mask for e in encoded], np.int64)  # (B, L)
            (hidden,) = session.run(None, {"ids": ids, "mask": mask})  # (B, L, D)
            m = mask.astype(np.float32)
            tokens = hidden * m[..., None]
            return moe_ort["contextual"].run(None, {"tokens": tokens, "mask": m})[0]

        return fn

    fns: dict[str, Callable] = {}
    for name in paths:
        if name == "static/torch":
            fns[name] = torch_path(static, moe["static"])
        elif name == "static/onnxruntime":
            fns[name] = ort_static
        elif name == "contextual/torch":
            fns[name] = torch_path(contextual, moe["contextual"])
        elif name.startswith("contextual/onnxruntime"):
            int8 = name.endswith("int8")
            path = export_minilm(contextual._encoder, workdir / "minilm.onnx", int8)
            fns[name] = ort_contextual(_ort_session(path, threads))
        else:
            raise ValueError(f"unknown path {name!r}")
    results: dict[str, dict[str, float]] = {}
    for name, fn in fns.items():
        for b in batch_sizes:
            batches = [prompts[i * b : (i + 1) * b] for i in range(repeats + 1)]
            results.setdefault(name, {})[f"batch_{b}_ms_per_prompt"] = round(_time(fn, batches), 4)
    return {
        "command": "PYTHONPATH=service python benchmarks/estimator_latency.py",
        "threads": threads,
        "repeats": repeats,
        "host": platform.node(),
        "cpu_count": len(os.sched_getaffinity(0)),
        "load_average_1m": round(os.getloadavg()[0], 2),  # shared hosts inflate every figure
        "encoder": str(default_encoder_path()),
        "moe_parameters": moe["static"].n_parameters(),
        "ms_per_prompt": results,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--model", help="a trained estimator folder (default: untrained default config)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    report = run(sizes, args.repeats, args.threads, model_dir=args.model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ms_per_prompt"], indent=2))


if __name__ == "__main__":
    main()
