"""Engine throughput in one run: torch fp32, torch bf16 autocast, ONNX Runtime.

Uses the committed weights in models/ (skips an engine whose weights are missing). Run with
``make bench``; ``make test`` runs each case once. Images/s land in the JSON's ``extra_info``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2i_router.engines import Engine, TextEncoder, WeightsNotFoundError
from t2i_router.engines.export import OnnxDenoiser
from t2i_router.engines.sampler import SAMPLERS, make_scheduler
from t2i_router.engines.serving import ensure_onnx
from t2i_router.world import sample_prompts

MODELS = Path(__file__).resolve().parents[1] / "models"
BATCH = 16


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def _engine(name: str, runtime: str, encoder: TextEncoder) -> Engine:
    try:
        engine = Engine.load(MODELS / name, encoder)
    except WeightsNotFoundError as e:
        pytest.skip(str(e))
    if runtime == "onnxruntime":
        return Engine(engine.config, OnnxDenoiser(ensure_onnx(MODELS / name)), encoder)
    if runtime == "torch_bf16":
        model = engine.denoise

        def bf16(*args):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(*args).float()

        return Engine(engine.config, bf16, encoder)
    return engine


@pytest.mark.parametrize(
    "runtime",
    ["torch_fp32", pytest.param("torch_bf16", marks=pytest.mark.native_bf16), "onnxruntime"],
)
@pytest.mark.parametrize("name", ["edge_small", "cloud_large"])
def test_bench_engine_images_per_s(benchmark, encoder, name, runtime):
    engine = _engine(name, runtime, encoder)
    prompts = [t for t, _ in sample_prompts(BATCH, seed=1)]
    seeds = list(range(BATCH))
    images = benchmark.pedantic(engine.generate, (prompts, seeds), rounds=3, warmup_rounds=1)
    assert images.shape == (BATCH, 32, 32, 3)
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.median, 2)
        benchmark.extra_info["steps"] = engine.config.default_steps


@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("name", ["edge_small", "cloud_large"])
def test_bench_onnxruntime_batch_scaling(benchmark, encoder, name, batch):
    """Images/s of the ONNX Runtime engine (what Triton runs) by batch size, in one run.

    images/s at the best batch over images/s at batch 1 is the most any dynamic batching can
    gain on this host (issue 4's goal asks 2.5x at concurrency 32).
    """
    engine = _engine(name, "onnxruntime", encoder)
    prompts = [t for t, _ in sample_prompts(batch, seed=1)]
    seeds = list(range(batch))
    rounds = max(1, 32 // batch)  # about the same number of images per case
    images = benchmark.pedantic(engine.generate, (prompts, seeds), rounds=rounds, warmup_rounds=1)
    assert images.shape == (batch, 32, 32, 3)
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_s"] = round(batch / benchmark.stats.stats.median, 2)


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bench_sampler_arithmetic(benchmark, sampler, batch):
    """A sampler's own cost: 20 steps on a stand-in prediction, no UNet, in one run.

    All samplers call the UNet once per step; this is what each adds on top (the multistep
    solvers' per-step arithmetic), which matters at batch 1 for the small edge UNet.
    """
    x0 = torch.randn((batch, 3, 32, 32), generator=torch.Generator().manual_seed(0))

    def run():
        scheduler = make_scheduler(1000, sampler)
        scheduler.set_timesteps(20)
        x = x0
        for t in scheduler.timesteps:
            x = scheduler.step(0.1 * x, t, x).prev_sample
        return x

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert out.shape == x0.shape and torch.isfinite(out).all()
    if benchmark.stats is not None:
        benchmark.extra_info["ms_per_step"] = round(benchmark.stats.stats.median / 20 * 1e3, 3)
