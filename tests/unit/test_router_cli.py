"""The router's command line: serve's missing-estimator error, and the generate / route /
budget clients against a real grpc.aio server on port 0 (only Triton is faked)."""

from __future__ import annotations

import asyncio
import json

import pytest
from PIL import Image
from router_fakes import FakeEngines, make_router

from t2i_router.cli import main
from t2i_router.errors import InvalidRequest
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router.triton import TritonClient


@pytest.fixture
async def address():
    router = make_router(engines=FakeEngines())
    service = RouterService(RouterConfig(port=0, warm_start_prompts=16), router)
    port = await service.start()
    yield f"127.0.0.1:{port}"
    await service.stop()


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    # The blocking grpc client runs in a thread while the loop serves it.
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_generate_writes_the_png_and_prints_the_decision(address, tmp_path, capsys):
    out = tmp_path / "img" / "out.png"
    code, stdout, err = await run_cli(
        capsys, "generate", "a red circle", "-o", str(out), "--target", "cloud", "--seed", "3",
        "--address", address,
    )  # fmt: skip
    assert code == 0, err
    assert Image.open(out).size == (32, 32)
    decision = json.loads(stdout)["decision"]
    assert decision["engine"] == "cloud_large" and decision["forced"] is True


async def test_route_prints_one_decision_per_prompt(address, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\ntwo blue squares above a green triangle\n")
    code, stdout, err = await run_cli(
        capsys, "route", "--prompts-file", str(prompts), "--dry-run", "--address", address
    )
    assert code == 0, err
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [x["prompt"] for x in lines] == [
        "a red circle",
        "two blue squares above a green triangle",
    ]
    assert all(x["counted"] in (False, None) and x["choice"] for x in lines)


async def test_budget_set_then_get(address, capsys):
    code, stdout, err = await run_cli(
        capsys, "budget", "set", "--rate", "0.3", "--address", address
    )
    assert code == 0 and json.loads(stdout)["target_rate"] == 0.3, err
    code, stdout, err = await run_cli(capsys, "budget", "get", "--address", address)
    assert code == 0 and json.loads(stdout)["target_rate"] == 0.3, err


async def test_a_refused_call_is_one_line_naming_the_status(address, capsys):
    code, _, err = await run_cli(capsys, "generate", " ", "-o", "unused.png", "--address", address)
    assert code == 2
    assert err.strip().splitlines() == [
        f"t2i-router: error: Generate at {address}: INVALID_ARGUMENT: prompt ' ' is empty"
    ]


def test_serve_without_the_estimator_folder_names_it(tmp_path, capsys):
    missing = tmp_path / "quality_estimator"
    assert main(["serve", "--port", "0", "--estimator", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"t2i-router: error: no quality estimator at {missing}: train one into "
                   "that folder, or pass --estimator DIR"]  # fmt: skip


async def test_triton_client_estimate_checks_its_prompts():
    async with TritonClient("127.0.0.1:1") as client:
        with pytest.raises(InvalidRequest, match="non-empty list"):
            await client.estimate("quality_estimator", [])


def test_json_logs_are_one_object_per_line() -> None:
    import logging

    from t2i_router.router.logs import JsonLogFormatter

    record = logging.LogRecord(
        "t2i_router.x", logging.INFO, __file__, 1, "lambda=%.2f", (0.5,), None
    )
    entry = json.loads(JsonLogFormatter().format(record))
    assert entry["message"] == "lambda=0.50" and entry["level"] == "INFO"
    assert entry["logger"] == "t2i_router.x" and entry["ts"].endswith("Z")


def test_estimator_runtime_is_checked_by_name():
    from t2i_router.errors import ConfigError
    from t2i_router.router.config import RouterConfig

    assert RouterConfig(estimator_runtime="triton").estimator_runtime == "triton"
    with pytest.raises(ConfigError, match="estimator_runtime is 'gpu'"):
        RouterConfig(estimator_runtime="gpu")
    env = {"T2I_ROUTER_ESTIMATOR_RUNTIME": "triton"}
    assert RouterConfig.from_env(env).estimator_runtime == "triton"
