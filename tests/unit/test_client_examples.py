"""The client examples in clients/python/examples run against a real grpc.aio router on port 0
(engines faked, the estimator a tiny seeded model) and call every rpc they show."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
from PIL import Image
from router_fakes import FakeEngines, make_router

from t2i_router.router.server import RouterConfig, RouterService

EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "python" / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def address():
    service = RouterService(
        RouterConfig(port=0, warm_start_prompts=16), make_router(engines=FakeEngines())
    )
    port = await service.start()
    yield f"127.0.0.1:{port}"
    await service.stop()


async def test_sync_example_routes_generates_streams_and_reads_the_budget(
    address, tmp_path, capsys
):
    example = load("sync_client")
    await asyncio.to_thread(example.main, ["--address", address, "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["route"] * 2 + ["generate"] + ["batch"] * 2 + [
        "budget"
    ]
    for name in ("generate.png", "batch-0.png", "batch-1.png"):
        assert Image.open(tmp_path / name).size == (32, 32)
    # the dry run did not count; Generate and the two batch items did
    assert out[-1].split("decisions")[1].strip() == "3"


async def test_async_example_makes_every_call_and_counts_them(address, capsys):
    example = load("async_client")
    await example.run(address, n=12, concurrency=4, timeout_s=30.0)
    out = capsys.readouterr().out
    assert out.startswith("12 calls in ")
    assert "failures: {}" in out
