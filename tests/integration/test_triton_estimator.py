"""quality_estimator served by a real tritonserver: same Q as in-process, bad requests alone.

A tiny seeded static-feature estimator stands in for the trained one (none is committed yet);
the repository is written by the same builder as ``t2i-router triton build-repo``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from t2i_router.estimator.choices import choice_costs, parse_choices
from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE
from t2i_router.estimator.quality import QualityEstimator
from t2i_router.triton import ManagedTritonServer, TritonClient, TritonServerConfig
from t2i_router.triton.repository import (
    ESTIMATOR_MODEL,
    EstimatorModelSettings,
    write_estimator_model,
)
from t2i_router.world import sample_prompts

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Long enough that concurrent requests land in one execution (the bad-request test needs it).
QUEUE_DELAY_US = 200_000


@pytest.fixture(scope="module")
def estimator_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = EstimatorConfig(features="static", top_k=3, rank=2, hidden=4)
    return TokenSelectionMoE(config).eval().save_pretrained(tmp_path_factory.mktemp("estimator"))


@pytest.fixture(scope="module")
def estimator_triton(estimator_dir, tmp_path_factory) -> ManagedTritonServer:
    repo = tmp_path_factory.mktemp("estimator_repo")
    settings = EstimatorModelSettings(max_batch_size=32, max_queue_delay_us=QUEUE_DELAY_US)
    write_estimator_model(repo, estimator_dir, ROOT / "models", settings)
    log_path = tmp_path_factory.mktemp("estimator_logs") / "tritonserver.log"
    config = TritonServerConfig(model_repository=repo, log_path=log_path, startup_timeout_s=120)
    with ManagedTritonServer(config) as server:
        yield server


async def _infer(client, prompts: list[bytes]) -> np.ndarray:
    column = np.array([[p] for p in prompts], dtype=np.object_)  # (B, 1)
    inp = grpcclient.InferInput("PROMPT", list(column.shape), "BYTES")
    inp.set_data_from_numpy(column)
    result = await client.infer(ESTIMATOR_MODEL, [inp])
    return result.as_numpy("Q")


async def test_triton_q_matches_the_in_process_estimator(estimator_triton, estimator_dir):
    prompts = [t for t, _ in sample_prompts(10, seed=5)]
    client = grpcclient.InferenceServerClient(estimator_triton.grpc_url)
    try:
        whole = await _infer(client, [p.encode() for p in prompts[:6]])
        singles = await asyncio.gather(*(_infer(client, [p.encode()]) for p in prompts[6:]))
    finally:
        await client.close()
    got = np.concatenate([whole, *singles])
    ref = QualityEstimator.load(estimator_dir).predict(prompts)
    assert got.dtype == np.float32 and got.shape == ref.shape == (10, 4, ref.shape[2])
    np.testing.assert_allclose(got, ref, atol=1e-4)


async def test_empty_prompt_fails_alone_while_its_batch_is_served(estimator_triton):
    prompts = [b"a red circle", b"", b"two blue squares", b"\xff\xfe", b"a green star"]
    client = grpcclient.InferenceServerClient(estimator_triton.grpc_url)
    try:
        async with TritonClient(estimator_triton.grpc_url) as stats_client:
            before = await stats_client.statistics(ESTIMATOR_MODEL)
            results = await asyncio.gather(
                *(_infer(client, [p]) for p in prompts), return_exceptions=True
            )
            for _ in range(50):  # statistics settle just after the responses
                after = await stats_client.statistics(ESTIMATOR_MODEL)
                if after.inference_count - before.inference_count >= 3:
                    break
                await asyncio.sleep(0.1)
        ref = await _infer(client, [prompts[0], prompts[2], prompts[4]])
    finally:
        await client.close()
    for i, message in ((1, "PROMPT is empty"), (3, "not UTF-8")):
        assert isinstance(results[i], InferenceServerException), results[i]
        assert message in results[i].message() and "INVALID_ARG" in results[i].status()
    served = np.concatenate([results[0], results[2], results[4]])
    np.testing.assert_allclose(served, ref, atol=1e-6)
    # The five requests shared executions (the bad ones were in a served batch).
    assert after.inference_count - before.inference_count >= 3
    assert 1 <= after.execution_count - before.execution_count < len(prompts)


async def test_model_config_parameters_carry_choices_metrics_and_costs(
    estimator_triton, estimator_dir
):
    client = grpcclient.InferenceServerClient(estimator_triton.grpc_url)
    try:
        config = (await client.get_model_config(ESTIMATOR_MODEL, as_json=True))["config"]
    finally:
        await client.close()
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    estimator = QualityEstimator.load(estimator_dir)
    assert params["choices"].split(",") == list(estimator.choices)
    assert params["metrics"].split(",") == list(estimator.metrics)
    costs = choice_costs(parse_choices(estimator.choices), ROOT / "models")
    gflops = [float(x) for x in params["cost_gflops"].split(",")]
    assert gflops == pytest.approx([costs[c].gflops for c in estimator.choices], rel=1e-5)
    [output] = config["output"]
    assert output["name"] == "Q" and output["data_type"] == "TYPE_FP32"
    assert [int(d) for d in output["dims"]] == [len(estimator.choices), len(estimator.metrics)]


async def test_router_triton_estimator_reads_its_names_from_the_model_and_predicts_as_in_process(
    estimator_triton, estimator_dir
):
    from t2i_router.router.estimator import EstimatorNotFoundError, TritonEstimator

    prompts = [t for t, _ in sample_prompts(5, seed=7)]
    async with TritonClient(estimator_triton.grpc_url) as client:
        estimator = await TritonEstimator.connect(client)
        q = await estimator.predict(prompts)
        assert await estimator.ready()
        with pytest.raises(EstimatorNotFoundError, match="serves no 'no_such_model' model"):
            await TritonEstimator.connect(client, model="no_such_model")
    reference = QualityEstimator.load(estimator_dir)
    assert estimator.choices == tuple(reference.choices)
    assert estimator.metric_names == tuple(reference.metrics)
    np.testing.assert_allclose(q, reference.predict(prompts), atol=1e-4)


async def test_the_router_routes_on_the_estimator_triton_serves(estimator_triton, estimator_dir):
    """`serve --estimator-runtime triton`: Route's decisions come from Triton's Q."""
    from t2i_router.router.estimator import TritonEstimator
    from t2i_router.router.server import RouterConfig, build_router

    prompts = [t for t, _ in sample_prompts(12, seed=8)]
    config = RouterConfig(port=0, models_dir=ROOT / "models", estimator_runtime="triton")
    async with TritonClient(estimator_triton.grpc_url) as client:
        router = build_router(config, await TritonEstimator.connect(client), client)
        try:
            lam = await router.warm_start(prompts)
            decisions = await router.route(prompts, dry_run=True)
        finally:
            await router.close()
    q = QualityEstimator.load(estimator_dir).predict(prompts)
    reference = router.policy.decide(q, lam)  # in-process Q; Triton's agrees to 1e-4
    names = [c.name for c in reference.choices]
    for row, d in enumerate(decisions):
        assert d.multiplier == pytest.approx(lam)
        chosen = reference.objectives[row, names.index(d.choice.name)]
        # the same choice, or one whose objective ties the best within Q's tolerance
        assert chosen >= reference.objectives[row].max() - 2e-4, (row, d.choice.name)
