"""A burst ten times the queue bound on the real grpc.aio server (loopback, port 0; the tiny
seeded estimator, no Triton): the excess is refused with RESOURCE_EXHAUSTED quoting the bound,
every accepted request is answered, the server's own counts agree with what the client got, and
it serves afterwards with nothing left behind. The timed version, with capacity and a soak, is
`benchmarks/router_soak.py`."""

from __future__ import annotations

import asyncio
import threading

import grpc
from router_fakes import TinyQualityModel, make_router

from t2i_router.router.metrics import RouterMetrics
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router.router.types import Limits
from t2i_router_client import router_pb2, router_pb2_grpc

MAX_QUEUE, BATCH = 8, 4
BURST = 10 * MAX_QUEUE


class GatedModel(TinyQualityModel):
    """Holds the estimator batches until `release` is set; records each batch's size."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[int] = []
        self.release = threading.Event()

    def predict(self, prompts):
        self.held.append(len(prompts))
        self.release.wait(timeout=30)
        return super().predict(prompts)


def route_count(metrics: RouterMetrics, status: str) -> float:
    """Route calls the server counted with ``status``, over every chosen choice."""
    return sum(
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "t2i_router_requests_total"
        and s.labels["rpc"] == "Route"
        and s.labels["status"] == status
    )


async def until(condition, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_burst_ten_times_the_queue_bound_refuses_the_excess_and_loses_nothing() -> None:
    model = GatedModel()
    # per-client concurrency above the burst: the queue bound alone refuses
    limits = Limits(max_concurrent_per_client=2 * BURST)
    metrics = RouterMetrics()
    router = make_router(model=model, max_queue=MAX_QUEUE, max_batch_size=BATCH)
    router.limits, router.metrics = limits, metrics
    config = RouterConfig(port=0, warm_start_prompts=0, grace_s=1, limits=limits)
    service = RouterService(config, router, metrics)
    port = await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = router_pb2_grpc.RouterStub(channel)
    prompts = [f"{n} red circles" for n in ("one", "two", "three", "four")]
    gauge = metrics.registry.get_sample_value
    try:
        before = router.budget_snapshot()
        calls = [
            asyncio.ensure_future(
                stub.Route(router_pb2.RouteRequest(prompts=[prompts[i % 4]]), timeout=30)
            )
            for i in range(BURST)
        ]

        def refused() -> list[grpc.aio.AioRpcError]:
            return [c.exception() for c in calls if c.done() and c.exception() is not None]

        # every call has arrived: held in the estimator, queued, or already refused
        await until(
            lambda: (
                model.held and len(refused()) + router.batcher.queue_depth + model.held[0] == BURST
            )
        )
        held = model.held[0]
        assert 1 <= held <= BATCH and router.batcher.queue_depth == MAX_QUEUE
        assert gauge("t2i_router_calls_in_flight") == held + MAX_QUEUE
        assert gauge("t2i_router_queue_depth") == MAX_QUEUE
        model.release.set()
        replies = await asyncio.gather(*calls, return_exceptions=True)

        ok = [r for r in replies if isinstance(r, router_pb2.RouteResponse)]
        errors = [r for r in replies if not isinstance(r, router_pb2.RouteResponse)]
        assert len(ok) == held + MAX_QUEUE and len(errors) == BURST - len(ok)
        for e in errors:
            assert isinstance(e, grpc.aio.AioRpcError), e
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"holds {MAX_QUEUE} items, limit is max_queue={MAX_QUEUE}" in e.details()
        for r in ok:  # each accepted request got its own decision
            assert len(r.decisions) == 1 and r.decisions[0].choice and r.decisions[0].counted
        # the server's own records: accepted = decided = answered OK
        after = router.budget_snapshot()
        decided = (after.decisions + after.uncounted_decisions) - (
            before.decisions + before.uncounted_decisions
        )
        assert decided == len(ok) == route_count(metrics, "OK")
        assert route_count(metrics, "RESOURCE_EXHAUSTED") == len(errors)

        # and it serves afterwards, with nothing left in flight or queued
        await until(lambda: service.limiter.in_flight() == 0)
        assert router.batcher.queue_depth == 0 and gauge("t2i_router_calls_in_flight") == 0
        again = await stub.Route(router_pb2.RouteRequest(prompts=prompts), timeout=10)
        assert len(again.decisions) == len(prompts)
        assert gauge("t2i_router_asyncio_tasks") >= 1 and gauge("process_open_fds") > 0
    finally:
        model.release.set()
        await channel.close()
        await service.stop()
