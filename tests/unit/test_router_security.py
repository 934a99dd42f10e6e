"""Security of the real grpc.aio server on a free loopback port (only Triton is faked):
loopback by default, TLS and mTLS with certificates made at test time, bearer tokens checked in
the interceptor, health and reflection open, tokens never logged, and the CLI clients."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from router_fakes import FakeEngines, make_router
from router_tls import make_pki

from t2i_router.cli import main
from t2i_router.errors import ConfigError
from t2i_router.router.security import Tokens, bearer, is_loopback
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router_client import SERVICE_NAME, router_pb2, router_pb2_grpc

GEN_TOKEN = "gen-7f3a9c1e5b2d"
ADMIN_TOKEN = "adm-0c4e8a2f6d1b"
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


async def start(**config) -> RouterService:
    service = RouterService(
        RouterConfig(port=0, warm_start_prompts=0, grace_s=1, **config),
        make_router(engines=FakeEngines()),
    )
    await service.start()
    return service


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False), ("::", False),
     ("router.example", False)],
)  # fmt: skip
def test_loopback_hosts_are_told_apart(host, loopback) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_host_needs_tls_or_insecure(pki) -> None:
    with pytest.raises(ConfigError, match=r"host 0\.0\.0\.0 is not loopback: serve it with TLS"):
        RouterConfig(host="0.0.0.0")
    assert RouterConfig(host="0.0.0.0", insecure=True).host == "0.0.0.0"
    assert RouterConfig(host="0.0.0.0", tls_cert=pki.server_cert, tls_key=pki.server_key).tls
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        RouterConfig(tls_cert=pki.server_cert)
    with pytest.raises(ConfigError, match="--tls-client-ca needs TLS"):
        RouterConfig(tls_client_ca=pki.ca)
    assert RouterConfig.from_env({"T2I_ROUTER_HOST": "::", "T2I_ROUTER_INSECURE": "true"}).insecure


def test_serve_refuses_a_public_host_without_tls_in_one_line(tmp_path, capsys) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--estimator", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "t2i-router: error: host 0.0.0.0 is not loopback: serve it with TLS (--tls-cert and "
        "--tls-key) or pass --insecure to accept plaintext"
    ]


def test_tokens_come_from_files_or_the_environment_and_never_show(tmp_path) -> None:
    (tmp_path / "gen").write_text(f"{GEN_TOKEN}\n")
    env = {"T2I_ROUTER_TOKEN": "from-env", "T2I_ROUTER_ADMIN_TOKEN": ADMIN_TOKEN}
    config = RouterConfig.from_env(env, token_file=tmp_path / "gen")
    assert config.tokens() == Tokens(GEN_TOKEN, ADMIN_TOKEN)
    assert RouterConfig.from_env(env).tokens().generation == "from-env"
    for text in (repr(config), repr(config.tokens())):
        assert GEN_TOKEN not in text and ADMIN_TOKEN not in text and "from-env" not in text
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        RouterConfig(token_file=tmp_path / "empty").tokens()
    assert Tokens(GEN_TOKEN, ADMIN_TOKEN).grant(ADMIN_TOKEN) == {"admin", "generation"}
    assert Tokens(GEN_TOKEN, None).grant(GEN_TOKEN[:-1]) == set()
    assert bearer((("Authorization", "bearer  abc "),)) == "abc"
    assert bearer((("authorization", "Basic abc"),)) is None


async def test_tokens_guard_the_router_and_leave_health_and_reflection_open(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    service = await start(token=GEN_TOKEN, admin_token=ADMIN_TOKEN)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            generate = router_pb2.GenerateRequest(prompt=PROMPT, target=2)
            set_budget = router_pb2.SetBudgetRequest(target_rate=0.4)
            for metadata in (None, auth("wrong"), auth(GEN_TOKEN + "x"), (("authorization", ""),)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Generate(generate, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "Bearer" in refused.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SetBudget(set_budget, metadata=auth(GEN_TOKEN))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetBudget(router_pb2.GetBudgetRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert service.router.budget_snapshot().target_rate == pytest.approx(0.3)

            assert (await stub.Generate(generate, metadata=auth(GEN_TOKEN))).png
            route = router_pb2.RouteRequest(prompts=[PROMPT], dry_run=True)
            assert (await stub.Route(route, metadata=auth(GEN_TOKEN))).decisions
            budget = await stub.GetBudget(router_pb2.GetBudgetRequest(), metadata=auth(GEN_TOKEN))
            assert budget.target_rate == pytest.approx(0.3)
            changed = await stub.SetBudget(set_budget, metadata=auth(ADMIN_TOKEN))
            assert changed.budget.target_rate == pytest.approx(0.4)
            batch = router_pb2.GenerateBatchRequest(requests=[generate])
            assert [r.index async for r in stub.GenerateBatch(batch, metadata=auth(ADMIN_TOKEN))]

            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
            assert replies[0].list_services_response.service
    finally:
        await service.stop()
    assert "refused" in caplog.text  # the refusals are logged ...
    assert GEN_TOKEN not in caplog.text and ADMIN_TOKEN not in caplog.text  # ... the tokens not


async def test_tls_serves_verified_clients_only(pki) -> None:
    service = await start(host="127.0.0.1", tls_cert=pki.server_cert, tls_key=pki.server_key)
    address = f"127.0.0.1:{service.port}"
    request = router_pb2.GenerateRequest(prompt=PROMPT, target=2)
    try:
        trusted = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        async with grpc.aio.secure_channel(address, trusted) as channel:
            assert (await router_pb2_grpc.RouterStub(channel).Generate(request, timeout=5)).png
        untrusted = grpc.ssl_channel_credentials(pki.other_ca.read_bytes())
        for channel in (
            grpc.aio.secure_channel(address, untrusted),
            grpc.aio.insecure_channel(address),  # plaintext to a TLS port
        ):
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await router_pb2_grpc.RouterStub(channel).Generate(request, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await service.stop()


async def test_mtls_requires_a_client_certificate(pki) -> None:
    service = await start(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    address = f"127.0.0.1:{service.port}"
    request = router_pb2.GenerateRequest(prompt=PROMPT, target=2)
    try:
        without = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        async with grpc.aio.secure_channel(address, without) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await router_pb2_grpc.RouterStub(channel).Generate(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        async with grpc.aio.secure_channel(address, with_cert) as channel:
            assert (await router_pb2_grpc.RouterStub(channel).Generate(request, timeout=5)).png
    finally:
        await service.stop()


async def test_the_cli_clients_speak_tls_with_tokens(pki, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "token").write_text(GEN_TOKEN)
    service = await start(
        tls_cert=pki.server_cert, tls_key=pki.server_key, token=GEN_TOKEN, admin_token=ADMIN_TOKEN
    )
    address = f"127.0.0.1:{service.port}"
    tls = ["--address", address, "--tls-ca", str(pki.ca)]
    out = tmp_path / "out.png"

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))
        stdout, stderr = capsys.readouterr()
        return code, stdout, stderr

    try:
        code, _, err = await cli("generate", PROMPT, "-o", str(out), *tls)
        assert code == 2 and "UNAUTHENTICATED" in err and GEN_TOKEN not in err
        code, stdout, err = await cli(
            "generate", PROMPT, "-o", str(out), "--token-file", str(tmp_path / "token"), *tls
        )
        assert code == 0 and out.exists(), err
        monkeypatch.setenv("T2I_ROUTER_TOKEN", GEN_TOKEN)
        code, stdout, err = await cli("budget", "get", *tls)
        assert code == 0 and json.loads(stdout)["target_rate"] == pytest.approx(0.3), err
        code, _, err = await cli("budget", "set", "--rate", "0.5", *tls)
        assert code == 2 and "PERMISSION_DENIED" in err
        monkeypatch.setenv("T2I_ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
        code, stdout, err = await cli("budget", "set", "--rate", "0.5", *tls)
        assert code == 0 and json.loads(stdout)["target_rate"] == pytest.approx(0.5), err
    finally:
        await service.stop()
