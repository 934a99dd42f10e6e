"""The engines served by a real tritonserver: same images as in-process, batching, bad requests.

Tiny seeded UNets stand in for the trained weights, so the test runs in seconds on any machine;
the repository is written by the same builder as the committed ``triton_repo/``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_router.engines import Denoiser, Engine, EngineConfig, TextEncoder, save_engine
from t2i_router.engines.export import OnnxDenoiser
from t2i_router.engines.invariance import assert_same_images
from t2i_router.engines.serving import ensure_onnx
from t2i_router.engines.unet import TINY_ENGINE_UNETS
from t2i_router.errors import InvalidRequest
from t2i_router.triton import ManagedTritonServer, TritonClient, TritonServerConfig
from t2i_router.triton.repository import (
    EngineModelSettings,
    write_engine_model,
    write_text_encoder_model,
)
from t2i_router.world import sample_prompts

pytestmark = pytest.mark.integration

TINY = TINY_ENGINE_UNETS


@pytest.fixture(scope="module")
def engine_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for i, (name, unet) in enumerate(TINY.items()):
        torch.manual_seed(i)
        config = EngineConfig(name=name, unet=unet, default_steps=3, max_steps=8)
        dirs[name] = save_engine(Denoiser(unet).eval(), config, root / name)
        ensure_onnx(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def engines_triton(engine_dirs, tmp_path_factory) -> ManagedTritonServer:
    repo = tmp_path_factory.mktemp("engine_repo")
    settings = EngineModelSettings(max_batch_size=32, max_queue_delay_us=20_000, threads=1)
    for name, engine_dir in engine_dirs.items():
        write_engine_model(repo, name, engine_dir, settings)
    # The same edge engine, encoding its prompts through the shared text_encoder model (BLS).
    bls = EngineModelSettings(max_batch_size=32, threads=1, text_encoder="bls")
    write_engine_model(repo, "edge_small_bls", engine_dirs["edge_small"], bls)
    write_text_encoder_model(repo)
    log_path = tmp_path_factory.mktemp("engine_logs") / "tritonserver.log"
    config = TritonServerConfig(model_repository=repo, log_path=log_path, startup_timeout_s=180)
    with ManagedTritonServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def in_process(engine_dirs) -> dict[str, Engine]:
    encoder = TextEncoder()
    out = {}
    for name, engine_dir in engine_dirs.items():
        base = Engine.load(engine_dir, encoder)
        out[name] = Engine(base.config, OnnxDenoiser(engine_dir / "model.onnx"), encoder)
    return out


@pytest.mark.parametrize("model", ["edge_small", "cloud_large"])
async def test_triton_images_match_in_process_engine(engines_triton, in_process, model):
    prompts = [t for t, _ in sample_prompts(12, seed=3)]
    seeds = list(range(100, 112))
    steps = [2, 3, 4] * 4
    async with TritonClient(engines_triton.grpc_url) as client:
        # Half as one multi-row request, half as concurrent single-row requests.
        first = await client.generate(model, prompts[:6], seeds[:6], steps=steps[:6])
        rest = await asyncio.gather(
            *(
                client.generate(model, [p], [s], steps=st)
                for p, s, st in zip(prompts[6:], seeds[6:], steps[6:])
            )
        )
    got = np.concatenate([first, *rest])
    assert got.shape == (12, 32, 32, 3)
    # Triton batches them its own way, on one thread: the same images up to batching
    assert_same_images(got, in_process[model].generate(prompts, seeds, steps))


async def test_concurrent_requests_share_executions(engines_triton):
    n = 12
    async with TritonClient(engines_triton.grpc_url) as client:
        before = await client.statistics("edge_small")
        await asyncio.gather(
            *(client.generate("edge_small", [f"a red circle {i}"], [i]) for i in range(n))
        )
        for _ in range(50):  # statistics settle just after the responses
            after = await client.statistics("edge_small")
            if after.inference_count - before.inference_count >= n:
                break
            await asyncio.sleep(0.1)
    assert after.inference_count - before.inference_count == n
    assert after.execution_count - before.execution_count < n


async def test_bad_request_fails_alone(engines_triton):
    async with TritonClient(engines_triton.grpc_url) as client:
        results = await asyncio.gather(
            client.generate("cloud_large", ["a red circle"], [1]),
            client.generate("cloud_large", ["  "], [2]),
            client.generate("cloud_large", ["a blue square"], [3], steps=99),
            client.generate("cloud_large", ["a green triangle"], [4], guidance=-2.0),
            client.generate("cloud_large", ["a black circle"], [5]),
            return_exceptions=True,
        )
    assert isinstance(results[0], np.ndarray) and isinstance(results[4], np.ndarray)
    for result, message in zip(
        results[1:4], ["PROMPT is empty", "steps is 99", "guidance is -2.0"], strict=True
    ):
        assert isinstance(result, InvalidRequest) and message in str(result), result


async def test_bls_text_encoder_gives_the_same_images(engines_triton):
    prompts = [t for t, _ in sample_prompts(6, seed=4)]
    seeds = list(range(6))
    async with TritonClient(engines_triton.grpc_url) as client:
        inline = await client.generate("edge_small", prompts, seeds)
        bls = await client.generate("edge_small_bls", prompts, seeds)
        with pytest.raises(InvalidRequest, match="PROMPT is empty"):
            await client.generate("edge_small_bls", [""], [0])
    # the same encoder, batched by another model: the same images up to batching
    assert_same_images(bls, inline)
