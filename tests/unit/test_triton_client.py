"""The Triton client's thin edges: error translation, statistics parsing, input checks; and
its keepalive against a real gRPC server in a process of its own, frozen with SIGSTOP."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from t2i_router.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelError,
    ResourceExhausted,
    RouterError,
    Unavailable,
)
from t2i_router.triton import ModelStatistics, TritonClient, translate_error
from t2i_router.triton.channel import channel_args, default_keepalive, server_keepalive_flags


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("StatusCode.UNAVAILABLE", Unavailable),
        ("StatusCode.NOT_FOUND", Unavailable),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
        ("StatusCode.INVALID_ARGUMENT", InvalidRequest),
        ("StatusCode.RESOURCE_EXHAUSTED", ResourceExhausted),
        ("StatusCode.INTERNAL", ModelError),
        ("StatusCode.UNKNOWN", ModelError),
        (None, ModelError),  # raised inside tritonclient, no status
    ],
)
def test_translate_error_decides_by_status_code(
    status: str | None, expected: type[RouterError]
) -> None:
    # The message says "unavailable" whatever the status, so substring matching would be wrong.
    source = InferenceServerException(msg="model unavailable?", status=status)
    error = translate_error(source, "edge_small at 127.0.0.1:8001")
    assert type(error) is expected
    assert "edge_small at 127.0.0.1:8001" in str(error) and "model unavailable?" in str(error)


def test_statistics_parse_omitted_zeros_and_string_int64() -> None:
    stats = {
        "model_stats": [
            {
                "name": "echo_image",
                "version": "1",
                "inference_count": "25",
                "execution_count": "4",
                "inference_stats": {"success": {"count": "23", "ns": "1"}, "fail": {"count": "2"}},
            },
            {"name": "echo_image", "version": "2"},  # never ran: every counter left out
        ]
    }
    assert ModelStatistics.from_json(stats) == ModelStatistics(25, 4, 23, 2)
    assert ModelStatistics.from_json({}) == ModelStatistics(0, 0, 0, 0)


@pytest.mark.parametrize(
    ("prompts", "seeds", "kwargs", "message"),
    [
        ([], [], {}, "prompts is empty"),
        ("a red circle", [1], {}, "one string"),
        (["a", "b"], [1], {}, r"seeds has shape \(1,\), expected \(2,\)"),
        (["a"], [1.5], {}, "expected integers"),
        ([b"a"], [1], {}, "not str"),
        (["a"], [1], {"steps": 0}, "steps must be integers >= 1"),
        (["a", "b"], [1, 2], {"steps": [4]}, r"steps has shape \(1,\)"),
        (["a"], [1], {"guidance": float("nan")}, "guidance must be finite"),
    ],
)
async def test_generate_rejects_bad_arguments_before_sending(
    prompts: object, seeds: object, kwargs: dict, message: str
) -> None:
    # Port 9 (discard) is never a Triton: reaching the network would fail differently.
    async with TritonClient("127.0.0.1:9") as client:
        with pytest.raises(InvalidRequest, match=message):
            await client.generate("echo_image", prompts, seeds, **kwargs)  # type: ignore[arg-type]


def test_engine_inputs_are_batch_first_columns() -> None:
    inputs = TritonClient._engine_inputs(["a", "b"], np.array([1, 2]), 4, [1.0, 2.0])
    assert [(i.name(), i.datatype(), i.shape()) for i in inputs] == [
        ("PROMPT", "BYTES", [2, 1]),
        ("SEED", "INT64", [2, 1]),
        ("STEPS", "INT32", [2, 1]),
        ("GUIDANCE", "FP32", [2, 1]),
    ]


# ----- keepalive

HUNG_TRITON = Path(__file__).with_name("hung_triton.py")


def test_the_channel_pings_triton_and_triton_is_told_to_accept_the_pings() -> None:
    keepalive = default_keepalive()
    args = dict(channel_args(1000, keepalive))
    assert args["grpc.keepalive_time_ms"] == keepalive.keepalive_time_ms == 10_000
    assert args["grpc.keepalive_timeout_ms"] == keepalive.keepalive_timeout_ms == 20_000
    assert args["grpc.keepalive_permit_without_calls"] == 1
    assert args["grpc.http2.max_pings_without_data"] == 0
    assert args["grpc.http2.ping_timeout_ms"] == 20_000  # what an unanswered ping waits for
    flags = dict(f.removeprefix("--").split("=") for f in server_keepalive_flags(keepalive))
    assert flags["grpc-keepalive-permit-without-calls"] == "1"
    # Triton takes a ping closer than this to the last as abuse: it must be below the period
    assert int(flags["grpc-http2-min-recv-ping-interval-without-data"]) < 10_000


async def test_keepalive_fails_a_call_to_a_frozen_triton_and_spares_a_slow_one() -> None:
    """A call held by a live server lasts while its pings are answered; once the server's
    process is frozen (SIGSTOP) no ping is, and the call fails UNAVAILABLE within the keepalive
    period plus its timeout, though neither a deadline nor any other limit was set."""
    keepalive = grpcclient.KeepAliveOptions(
        keepalive_time_ms=200,
        keepalive_timeout_ms=500,
        keepalive_permit_without_calls=True,
        http2_max_pings_without_data=0,
    )
    # the server accepts pings 100 ms apart, as Triton with server_keepalive_flags(keepalive)
    server = subprocess.Popen(
        [sys.executable, str(HUNG_TRITON), "100"], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())
        async with TritonClient(f"127.0.0.1:{port}", keepalive=keepalive) as client:
            assert await client.is_model_ready("edge_small", timeout_s=10)
            call = asyncio.ensure_future(client.generate("edge_small", ["a red circle"], [0]))
            await asyncio.sleep(1.5)  # about 7 pings, all answered: the slow call goes on
            assert not call.done(), call
            os.kill(server.pid, signal.SIGSTOP)
            frozen_s = time.monotonic()
            with pytest.raises(Unavailable, match=r"edge_small at 127\.0\.0\.1:\d+: UNAVAILABLE"):
                await asyncio.wait_for(call, 20)
            detected_s = time.monotonic() - frozen_s
        # until the next ping (grpc sends at most one a second), its timeout, and slack for a
        # busy 2-core host; without the ping timeout it took 60 s, without keepalive forever
        assert detected_s < 1.0 + 0.5 + 2.0, detected_s
    finally:
        server.kill()  # SIGKILL ends a stopped process too
        server.wait(10)
