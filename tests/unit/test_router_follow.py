"""`RouterService.follow`: health follows a managed Triton's supervisor at once, not at the next
readiness poll. A real grpc.aio server on port 0; the supervisor and Triton are faked (the real
ones: tests/integration/test_router_faults.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from router_fakes import FakeEngines, make_router

from t2i_router.errors import InvalidRequest
from t2i_router.router.server import RouterConfig, RouterService, triton_supervisor
from t2i_router_client import SERVICE_NAME

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeSupervisor:
    """Calls its subscribers from its own thread, as `TritonSupervisor` does."""

    def __init__(self) -> None:
        self.subscribers: list = []

    def subscribe(self, on_down, on_up):
        entry = (on_down, on_up)
        self.subscribers.append(entry)
        return lambda: self.subscribers.remove(entry)

    def fire(self, index: int, *args) -> None:
        for entry in list(self.subscribers):
            thread = threading.Thread(target=entry[index], args=args)
            thread.start()
            thread.join()


async def status_within(channel, wanted: int, timeout_s: float) -> float:
    """Seconds until health reports ``wanted`` (fails after ``timeout_s``)."""
    stub = health_pb2_grpc.HealthStub(channel)
    start_s = time.monotonic()
    while True:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        if reply.status == wanted:
            return time.monotonic() - start_s
        assert time.monotonic() - start_s < timeout_s, f"health is {reply.status}, not {wanted}"
        await asyncio.sleep(0.02)


async def test_health_drops_at_once_when_triton_dies_and_returns_fast_when_it_is_back():
    engines = FakeEngines()
    router = make_router(engines=engines)
    # Readiness is polled every 5 s: only the supervisor's events can explain faster changes.
    config = RouterConfig(port=0, warm_start_prompts=0, health_interval_s=5.0)
    service = RouterService(config, router)
    supervisor = FakeSupervisor()
    port = await service.start()
    service.follow(supervisor)
    try:
        assert await service.wait_serving(10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await status_within(channel, SERVING, 5)
            engines.ready = {"edge_small": False, "cloud_large": False}
            supervisor.fire(0, "tritonserver pid 7 exited with status -9")
            assert await status_within(channel, NOT_SERVING, 2) < 2
            assert router._down == {"edge_small", "cloud_large"}
            await asyncio.sleep(0.3)  # the woken watcher sees Triton still down
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert reply.status == NOT_SERVING
            engines.ready = {"edge_small": True, "cloud_large": True}
            supervisor.fire(1)
            assert await status_within(channel, SERVING, 2) < 2
    finally:
        await service.stop()
    assert supervisor.subscribers == []  # stop unsubscribed


def test_restart_settings_come_from_the_environment_into_the_supervisor(tmp_path) -> None:
    environ = {
        "T2I_ROUTER_TRITON_RESTART_INITIAL_S": "2.5",
        "T2I_ROUTER_TRITON_RESTART_MAX_S": "60",
        "T2I_ROUTER_TRITON_UNHEALTHY_S": "45",
        "T2I_ROUTER_HEALTH_INTERVAL_S": "0.5",
    }
    config = RouterConfig.from_env(environ, triton_repo=tmp_path)
    supervisor = triton_supervisor(config)  # built, not started
    policy = supervisor.backoff.policy
    assert (policy.initial_delay_s, policy.max_delay_s) == (2.5, 60.0)
    assert policy.reset_after_s == RouterConfig().triton_restart_reset_s
    assert (supervisor.unhealthy_after_s, supervisor.probe_interval_s) == (45.0, 0.5)
    assert supervisor.server.config.model_repository == tmp_path
    with pytest.raises(InvalidRequest, match=r"initial 40\.0 s, max 30\.0 s"):
        RouterConfig(triton_restart_initial_s=40.0)
    with pytest.raises(InvalidRequest, match="state_flush_interval_s is -1"):
        RouterConfig(state_flush_interval_s=-1)
