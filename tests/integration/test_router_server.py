"""The router end to end: a grpc.aio server on port 0 in front of a real tritonserver serving the
committed ``triton_repo/`` engines, with a tiny seeded estimator in-process (a linear head over
mean-pooled MiniLM embeddings; never a hard-coded score). Clients use the generated stubs.
One Triton serves the whole module.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from t2i_router.engines import TextEncoder
from t2i_router.estimator.choices import DEFAULT_CHOICES
from t2i_router.router.estimator import InProcessEstimator
from t2i_router.router.server import RouterConfig, RouterService, build_router
from t2i_router.triton import ManagedTritonServer, TritonClient, TritonServerConfig
from t2i_router.triton.server import process_group_members
from t2i_router.world import ASPECTS, sample_prompts
from t2i_router_client import SERVICE_NAME, router_pb2, router_pb2_grpc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [text for text, _ in sample_prompts(8, seed=21)]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class TinyMiniLMEstimator:
    """Seeded linear head over mean-pooled MiniLM token embeddings, sigmoid: Q (N, M, K)."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.encoder = TextEncoder()
        self.choices = tuple(c.name for c in DEFAULT_CHOICES)
        self.metric_names = tuple(ASPECTS)
        m, k = len(self.choices), len(self.metric_names)
        self.head = torch.nn.Linear(384, m * k)
        with torch.no_grad():
            self.head.weight.mul_(20.0)  # spread predictions so that decisions differ

    @torch.inference_mode()
    def predict(self, prompts):
        tokens, mask = self.encoder.encode(list(prompts))  # (N, L, 384), (N, L)
        t, w = torch.from_numpy(tokens), torch.from_numpy(mask)[..., None]
        pooled = (t * w).sum(1) / w.sum(1)  # (N, 384)
        q = torch.sigmoid(self.head(pooled))  # (N, M * K)
        return q.reshape(len(prompts), len(self.choices), len(self.metric_names)).numpy()


class LoadingEstimator(InProcessEstimator):
    """Reports not ready until the test says it has loaded."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.loaded = asyncio.Event()

    async def ready(self) -> bool:
        return self.loaded.is_set()


@pytest.fixture(scope="module")
def triton(tmp_path_factory) -> ManagedTritonServer:
    log_path = tmp_path_factory.mktemp("router_triton") / "tritonserver.log"
    config = TritonServerConfig(
        model_repository=ROOT / "triton_repo", log_path=log_path, startup_timeout_s=400
    )
    with ManagedTritonServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_model() -> TinyMiniLMEstimator:
    return TinyMiniLMEstimator()


@pytest.fixture
async def served(triton, tiny_model, tmp_path):
    config = RouterConfig(
        port=0,
        state_dir=tmp_path / "state",
        health_interval_s=0.1,
        warm_start_prompts=32,
        models_dir=ROOT / "models",
    )
    estimator = LoadingEstimator(tiny_model)
    async with TritonClient(triton.grpc_url) as client:
        router = build_router(config, estimator, client)
        service = RouterService(config, router)
        port = await service.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield service, estimator, channel
        await service.stop()


async def health_status(channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))).status


async def test_health_then_generate_route_and_budget(served) -> None:
    service, estimator, channel = served
    assert await health_status(channel) == NOT_SERVING  # the estimator is still "loading"
    estimator.loaded.set()
    assert await service.wait_serving(10)
    assert await health_status(channel) == SERVING
    stub = router_pb2_grpc.RouterStub(channel)

    reply = await stub.Generate(router_pb2.GenerateRequest(prompt=PROMPTS[0], seed=3), timeout=60)
    image = np.asarray(Image.open(io.BytesIO(reply.png)))
    assert image.shape == (32, 32, 3) and image.std() > 0
    d = reply.decision
    assert d.engine in ("edge_small", "cloud_large") and d.choice == f"{d.engine}@{d.steps}"
    assert d.counted and not d.forced and len(d.evaluations) == len(DEFAULT_CHOICES)
    assert d.timings.generate_ms > 0 and d.timings.total_ms >= d.timings.generate_ms

    forced = await stub.Generate(
        router_pb2.GenerateRequest(
            prompt=PROMPTS[1], seed=3, target=router_pb2.TARGET_CLOUD, steps=2
        ),
        timeout=60,
    )
    assert forced.decision.engine == "cloud_large" and forced.decision.steps == 2
    assert forced.decision.forced and not forced.decision.counted

    start = await stub.GetBudget(router_pb2.GetBudgetRequest())
    assert start.warm_started and start.decisions == 1 and start.uncounted_decisions == 1
    dry = await stub.Route(router_pb2.RouteRequest(prompts=PROMPTS, dry_run=True))
    assert len(dry.decisions) == len(PROMPTS) and not any(x.counted for x in dry.decisions)
    assert (await stub.GetBudget(router_pb2.GetBudgetRequest())).decisions == 1
    routed = await stub.Route(router_pb2.RouteRequest(prompts=PROMPTS))
    assert [x.score for x in routed.decisions] == pytest.approx([x.score for x in dry.decisions])
    after = await stub.GetBudget(router_pb2.GetBudgetRequest())
    assert after.decisions == 1 + len(PROMPTS)
    assert after.cloud_decisions == sum(x.engine == "cloud_large" for x in routed.decisions) + (
        d.engine == "cloud_large"
    )

    changed = await stub.SetBudget(router_pb2.SetBudgetRequest(target_rate=0.5))
    assert changed.budget.target_rate == 0.5 and changed.budget.decisions == 0
    got = await stub.GetBudget(router_pb2.GetBudgetRequest())
    assert got.target_rate == 0.5 and got.multiplier == changed.budget.multiplier
    assert got.persisted  # written to the state dir


async def test_batch_streams_items_with_an_error_entry_and_bad_input_is_named(served) -> None:
    _, estimator, channel = served
    estimator.loaded.set()
    stub = router_pb2_grpc.RouterStub(channel)
    requests = [
        router_pb2.GenerateRequest(prompt=PROMPTS[2], seed=1, target=router_pb2.TARGET_EDGE),
        router_pb2.GenerateRequest(prompt=PROMPTS[3], seed=2, steps=500),
        router_pb2.GenerateRequest(prompt=PROMPTS[4], seed=3),
    ]
    batch = router_pb2.GenerateBatchRequest(requests=requests)
    results = {r.index: r async for r in stub.GenerateBatch(batch, timeout=60)}
    assert sorted(results) == [0, 1, 2]
    assert (
        results[1].error.code == "INVALID_ARGUMENT" and "steps is 500" in results[1].error.message
    )
    assert results[0].result.decision.engine == "edge_small" and results[2].result.png

    for request, quoted in (
        (router_pb2.GenerateRequest(prompt="   "), "prompt '   ' is empty"),
        (router_pb2.GenerateRequest(prompt="a red circle", target=9), "target is 9"),
        (router_pb2.GenerateRequest(prompt="x" * 2000), "2000 bytes"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Generate(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert quoted in raised.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as raised:  # the deadline reaches the Triton call
        await stub.Generate(router_pb2.GenerateRequest(prompt=PROMPTS[5]), timeout=0.001)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
    assert SERVICE_NAME in {s.name for s in replies[0].list_services_response.service}


SERVE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[2])
    from test_router_server import TinyMiniLMEstimator
    from t2i_router.router.cli import _serve
    from t2i_router.router.estimator import InProcessEstimator
    from t2i_router.router.server import RouterConfig
    config = RouterConfig(port=0, warm_start_prompts=8, models_dir=sys.argv[3], grace_s=5)
    asyncio.run(_serve(config, InProcessEstimator(TinyMiniLMEstimator()), sys.argv[1]))
    """
)


def test_serve_prints_its_port_answers_the_cli_clients_and_stops_on_sigterm(triton, tmp_path):
    # `serve` itself needs the trained estimator folder; this runs its serving loop with the
    # tiny estimator against the module's Triton, then generates through the CLI client
    # (the other clients are tested in tests/unit/test_router_cli.py).
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [triton.grpc_url, str(Path(__file__).parent), str(ROOT / "models")]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("serving on 127.0.0.1:"), line
        address = line.split()[-1]
        cli = [sys.executable, "-m", "t2i_router.cli"]
        out = tmp_path / "out.png"
        done = subprocess.run(
            [*cli, "generate", PROMPTS[6], "-o", str(out), "--address", address, "--seed", "4"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert Image.open(out).size == (32, 32) and '"engine"' in done.stdout
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert process_group_members(server.pid) == []
