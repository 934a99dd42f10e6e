"""Bad input against the real grpc.aio server on a free loopback port (only Triton is faked):
edge values, raw garbage on the wire, property-based requests (hypothesis). Every request gets a
result or a status other than INTERNAL/UNKNOWN, the server keeps SERVING and answering, and its
resident memory does not grow over many bad requests.

The server runs in a thread with its own event loop, so the tests (hypothesis's among them) are
plain synchronous functions over a blocking channel.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from router_fakes import FakeEngines, make_router

from t2i_router.errors import InvalidRequest
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router.router.tokens import MiniLMTokenCounter
from t2i_router.world import parse_prompt, sample_prompts
from t2i_router_client import SERVICE_NAME, router_pb2, router_pb2_grpc

INT64 = (-(2**63), 2**63 - 1)
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
IN_WORLD = [text for text, _ in sample_prompts(16, seed=3)]
METHODS = {
    "Generate": "unary",
    "GenerateBatch": "stream",
    "Route": "unary",
    "GetBudget": "unary",
    "SetBudget": "unary",
}


class Served:
    """A RouterService on its own loop in a thread; ``stub`` and ``channel`` block."""

    def __init__(self) -> None:
        self.engines = FakeEngines()
        router = make_router(engines=self.engines)
        router.count_tokens = MiniLMTokenCounter()
        config = RouterConfig(port=0, warm_start_prompts=0, grace_s=1, health_interval_s=0.05)
        self.service = RouterService(config, router)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        port = self.run(self.service.start())
        assert self.run(self.service.wait_serving(10))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = router_pb2_grpc.RouterStub(self.channel)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.channel.close()
        self.run(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def healthy(self) -> None:
        """SERVING, answering a good request, and no slot left taken."""
        health = health_pb2_grpc.HealthStub(self.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        ok = self.stub.Generate(router_pb2.GenerateRequest(prompt=IN_WORLD[0]), timeout=10)
        assert ok.png
        assert self.service.limiter.in_flight() == 0
        assert self.service.router.batcher.queue_depth == 0


@pytest.fixture(scope="module")
def served():
    s = Served()
    yield s
    s.close()


def status(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(prompt=""), "prompt '' is empty"),
        (dict(prompt=" \t\n "), "is empty"),
        (dict(prompt="x" * 1_000_000), "1000000 bytes, the limit is 1024"),
        (dict(prompt="é" * 600), "1200 bytes, the limit is 1024"),
        (dict(prompt="a red circle", target=7), "target is 7"),
        (dict(prompt="a red circle", target=-1), "target is -1"),
        (dict(prompt="a red circle", steps=0), "steps is 0, must be in 1..100"),
        (dict(prompt="a red circle", steps=2**32 - 1), "steps is 4294967295"),
        (dict(prompt="a red circle", guidance=float("nan")), "guidance is nan"),
        (dict(prompt="a red circle", guidance=float("inf")), "guidance is inf"),
        (dict(prompt="a red circle", guidance=-1.0), "guidance is -1.0"),
        (dict(prompt="a red circle", guidance=30.5), "guidance is 30.5, must be in [0, 30.0]"),
    ],
)
def test_bad_fields_are_invalid_argument_quoting_the_value(served, fields, message) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        served.stub.Generate(router_pb2.GenerateRequest(**fields), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details() and len(raised.value.details()) < 300


def test_a_message_over_the_size_limit_is_refused_by_grpc(served) -> None:
    big = router_pb2.GenerateRequest(prompt="x" * (5 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as raised:
        served.stub.Generate(big, timeout=10)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in raised.value.details()
    served.healthy()


def test_seeds_at_the_int64_edges_reach_the_engine_unchanged(served) -> None:
    for seed in (*INT64, -1, 0):
        reply = served.stub.Generate(
            router_pb2.GenerateRequest(prompt="a red circle", seed=seed, target=2), timeout=10
        )
        assert reply.png and served.engines.calls[-1]["seeds"] == [seed]


def test_out_of_world_prompts_are_served(served) -> None:
    """The engines' text encoder takes any text and the estimator scores any text, so the
    router serves prompts the world's parser rejects (docs/operations.md)."""
    prompt = "a purple elephant riding a bicycle"
    with pytest.raises(InvalidRequest):
        parse_prompt(prompt)
    assert served.stub.Generate(router_pb2.GenerateRequest(prompt=prompt), timeout=10).png
    route = served.stub.Route(router_pb2.RouteRequest(prompts=[prompt], dry_run=True))
    assert route.decisions[0].evaluations


def garbage(rng: random.Random) -> bytes:
    n = rng.choice((0, 1, 2, 7, 30, 200, 5000))
    return bytes(rng.getrandbits(8) for _ in range(n))


def send_raw(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    path = f"/{SERVICE_NAME}/{method}"
    if METHODS[method] == "stream":
        call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
        return status(lambda: list(call(payload, timeout=10)))
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    return status(lambda: call(payload, timeout=10))


def test_random_bytes_on_the_wire_get_a_status(served) -> None:
    rng = random.Random(0)
    seen: dict[grpc.StatusCode, int] = {}
    for i in range(250):
        method = list(METHODS)[i % len(METHODS)]
        code = send_raw(served.channel, method, garbage(rng))
        assert code not in BAD, (method, code)
        seen[code] = seen.get(code, 0) + 1
    # Most garbage is not a message at all; some parses (protobuf tolerates unknown fields).
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 50
    served.run(asyncio.sleep(0))
    served.service.router.set_budget(target_rate=0.3, multiplier=0.0)  # garbage may set them
    served.healthy()


prompts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(IN_WORLD),
    st.text(alphabet=" \t\n\r\u00a0\u2003", max_size=5),
    st.text(min_size=1000, max_size=1100),
)
requests = st.builds(
    router_pb2.GenerateRequest,
    prompt=prompts,
    seed=st.integers(*INT64),
    steps=st.none() | st.integers(0, 2**32 - 1),
    guidance=st.none() | st.floats(width=32),
    target=st.integers(-(2**31), 2**31 - 1) | st.integers(0, 3),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_any_generate_request_gets_an_image_or_invalid_argument(served, request) -> None:
    try:
        reply = served.stub.Generate(request, timeout=10)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        return
    assert reply.png and reply.decision.choice
    assert request.prompt.strip() and 0 <= request.target <= 3  # nothing bad was accepted
    assert not request.HasField("steps") or 1 <= request.steps <= 100


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts=st.lists(prompts, max_size=6), target=st.integers(-3, 5), dry_run=st.booleans())
def test_any_route_request_gets_one_decision_per_prompt_or_invalid_argument(
    served, prompts, target, dry_run
) -> None:
    request = router_pb2.RouteRequest(prompts=prompts, target=target, dry_run=dry_run)
    try:
        reply = served.stub.Route(request, timeout=10)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        return
    assert len(reply.decisions) == len(prompts) > 0


def test_memory_does_not_grow_over_many_bad_requests(served) -> None:
    rng = random.Random(1)
    bad = [
        router_pb2.GenerateRequest(prompt=""),
        router_pb2.GenerateRequest(prompt="x" * 1_000_000),
        router_pb2.GenerateRequest(prompt="a red circle", target=9),
        router_pb2.GenerateRequest(prompt="a red circle", steps=0),
    ]

    def round_of(n: int) -> None:
        for i in range(n):
            if i % 5 == 4:
                assert send_raw(served.channel, "Generate", garbage(rng)) not in BAD
            else:
                request = bad[i % 4]
                code = status(lambda r=request: served.stub.Generate(r, timeout=10))
                assert code == grpc.StatusCode.INVALID_ARGUMENT

    round_of(400)  # warm up: allocator arenas, grpc buffers, caches
    before = rss_bytes()
    round_of(2000)
    after = rss_bytes()
    assert after / before < 1.10, f"RSS grew from {before >> 20} MiB to {after >> 20} MiB"
    served.healthy()
