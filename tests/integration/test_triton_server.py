"""A real tritonserver (from the nvidia-pytriton wheel) started, served from, and stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from t2i_router.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelError,
    PortInUseError,
    TritonStartError,
    Unavailable,
)
from t2i_router.triton import (
    ManagedTritonServer,
    ModelStatistics,
    TritonClient,
    TritonServerConfig,
    connect,
)
from t2i_router.triton import server as server_module
from t2i_router.triton.channel import server_keepalive_flags
from t2i_router.triton.server import (
    is_process_alive,
    process_group_members,
    triton_environment,
)

pytestmark = pytest.mark.integration

MODEL = "echo_image"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions ``text`` (a repository path, say)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and is_process_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _wait_all_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if is_process_alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if is_process_alive(pid)]


async def _statistics_after(
    client: TritonClient, before: ModelStatistics, n_requests: int
) -> ModelStatistics:
    """Statistics once ``n_requests`` more requests than in ``before`` are counted.

    Triton updates them just after it answers, so a read right after the last response can
    miss that response.
    """
    deadline = time.monotonic() + 5
    while True:
        stats = await client.statistics(MODEL)
        done = stats.success_count + stats.failure_count
        if done - (before.success_count + before.failure_count) >= n_requests:
            return stats
        assert time.monotonic() < deadline, f"statistics stuck at {stats}"
        await asyncio.sleep(0.05)


def _expected_image(seed: int, steps: int = 0, guidance: float = 0.0) -> np.ndarray:
    """What echo_image draws (see its config.pbtxt): one color per channel."""
    color = [seed % 256, steps % 256, round(guidance * 10) % 256]
    return np.broadcast_to(np.array(color, np.uint8), (32, 32, 3))


def test_tritonserver_accepts_every_flag_we_pass(triton: ManagedTritonServer) -> None:
    # Guards a wheel upgrade: an unknown flag would only show up as a failed start.
    argv = Path(f"/proc/{triton.pid}/cmdline").read_bytes().decode().split("\0")
    flags = [arg.split("=")[0] for arg in argv if arg.startswith("--")]
    usage = subprocess.run(
        [argv[0], "--help"], env=triton_environment(), capture_output=True, text=True
    )
    listed = usage.stdout + usage.stderr
    assert "--model-repository" in flags
    assert [flag for flag in flags if f"  {flag} " not in listed] == []


def test_server_starts_on_free_ports_with_models_ready(triton: ManagedTritonServer) -> None:
    assert triton.running
    ports = triton.ports
    assert 0 not in (ports.grpc, ports.http, ports.metrics)
    assert len({ports.grpc, ports.http, ports.metrics}) == 3
    members = process_group_members(triton.pid)
    assert triton.pid in members and len(members) >= 2, f"no Python backend stub in {members}"
    assert connect(triton.grpc_url, ready_timeout_s=5).grpc_url == triton.grpc_url


async def test_generate_round_trip_fills_image_from_inputs(triton: ManagedTritonServer) -> None:
    async with TritonClient(triton.grpc_url) as client:
        assert await client.is_server_ready()
        assert await client.is_model_ready(MODEL)
        [state] = await client.repository_index()
        assert (state.name, state.ready) == (MODEL, True)

        plain = await client.generate(MODEL, ["a red circle", "two blue squares"], [7, 300])
        tuned = await client.generate(MODEL, ["a", "b"], [1, 2], steps=[4, 20], guidance=2.5)

    assert plain.shape == (2, 32, 32, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain[0], _expected_image(7))
    np.testing.assert_array_equal(plain[1], _expected_image(300))
    np.testing.assert_array_equal(tuned[0], _expected_image(1, steps=4, guidance=2.5))
    np.testing.assert_array_equal(tuned[1], _expected_image(2, steps=20, guidance=2.5))


# Triton's own defaults (``tritonserver --help``): no ping without a call, none closer than 5 min
# while it sends nothing; the third such ping gets a GOAWAY.
TRITON_PING_DEFAULTS = (
    "--grpc-keepalive-permit-without-calls=0",
    "--grpc-http2-min-recv-ping-interval-without-data=300000",
)


@pytest.mark.parametrize("ours", [True, False], ids=["our-flags", "triton-defaults"])
async def test_triton_keeps_a_pinging_connection_only_with_our_flags(
    own_repo: Path, tmp_path: Path, ours: bool
) -> None:
    """Triton started with `server_keepalive_flags` takes the client's keepalive pings while
    it is idle, without a GOAWAY; with Triton's defaults the same client, pinging every second,
    is cut off (``too_many_pings``) and its channel leaves READY. Either way a call after that
    is served (the channel reconnects)."""
    fast = grpcclient.KeepAliveOptions(
        keepalive_time_ms=1000,
        keepalive_timeout_ms=1000,
        keepalive_permit_without_calls=True,
        http2_max_pings_without_data=0,
    )
    flags = tuple(server_keepalive_flags(fast)) if ours else TRITON_PING_DEFAULTS
    config = TritonServerConfig(
        own_repo,
        log_path=tmp_path / "tritonserver.log",
        extra_args=flags,  # last: they win
    )
    with ManagedTritonServer(config) as server:
        async with TritonClient(server.grpc_url, keepalive=fast) as client:
            assert await client.is_server_ready(timeout_s=10)
            channel = client._client._channel  # the test's one look inside tritonclient
            states = [channel.get_state()]

            async def watch() -> None:
                while True:
                    await channel.wait_for_state_change(states[-1])
                    states.append(channel.get_state())

            watcher = asyncio.ensure_future(watch())
            try:
                await asyncio.sleep(6.0)  # idle: about 6 pings
                images = await client.generate(MODEL, ["a red circle"], [7])
            finally:
                watcher.cancel()
    names = [s.name for s in states]
    if ours:
        assert names == ["READY"], names  # never dropped, never reconnected
    else:
        assert names[:2] == ["READY", "IDLE"], names  # the GOAWAY closed the connection
    np.testing.assert_array_equal(images[0], _expected_image(7))


async def test_concurrent_requests_are_merged_into_fewer_executions(
    triton: ManagedTritonServer,
) -> None:
    n_requests = 16
    async with TritonClient(triton.grpc_url) as client:
        before = await client.statistics(MODEL)
        images = await asyncio.gather(
            *(client.generate(MODEL, [f"prompt {i}"], [i]) for i in range(n_requests))
        )
        after = await _statistics_after(client, before, n_requests)

    for i, image in enumerate(images):
        np.testing.assert_array_equal(image[0], _expected_image(i))
    assert after.inference_count - before.inference_count == n_requests  # rows
    assert after.success_count - before.success_count == n_requests
    executions = after.execution_count - before.execution_count
    assert 1 <= executions < n_requests, f"{n_requests} requests ran in {executions} executions"


async def test_bad_request_fails_alone_while_its_batch_succeeds(
    triton: ManagedTritonServer,
) -> None:
    prompts = ["ok 0", "", "ok 2", "!fail", "ok 4"]
    async with TritonClient(triton.grpc_url) as client:
        before = await client.statistics(MODEL)
        results = await asyncio.gather(
            *(client.generate(MODEL, [p], [i]) for i, p in enumerate(prompts)),
            return_exceptions=True,
        )
        after = await _statistics_after(client, before, len(prompts))

    assert isinstance(results[1], InvalidRequest), results[1]
    assert "PROMPT is empty" in str(results[1])
    assert isinstance(results[3], ModelError), results[3]
    for i in (0, 2, 4):
        np.testing.assert_array_equal(results[i][0], _expected_image(i))
    assert after.execution_count - before.execution_count < len(prompts), "nothing was batched"


async def test_unknown_model_and_short_deadline_are_translated(
    triton: ManagedTritonServer,
) -> None:
    async with TritonClient(triton.grpc_url) as client:
        with pytest.raises(Unavailable, match="no_such_model"):
            await client.generate("no_such_model", ["a"], [0])
        # echo_image sleeps 50 ms per execution, far beyond a 1 ms deadline.
        with pytest.raises(DeadlineExceeded):
            await client.generate(MODEL, ["a"], [0], timeout_s=0.001)
        assert not await client.is_model_ready("no_such_model")


async def test_client_of_absent_server_raises_unavailable() -> None:
    async with TritonClient(f"127.0.0.1:{_free_port()}") as client:
        assert not await client.is_server_ready(timeout_s=2)
        with pytest.raises(Unavailable, match="UNAVAILABLE"):
            await client.generate(MODEL, ["a"], [0], timeout_s=5)


def test_connect_to_absent_server_raises_unavailable() -> None:
    url = f"127.0.0.1:{_free_port()}"
    with pytest.raises(Unavailable, match=url):
        connect(url, ready_timeout_s=0.5)


def test_broken_model_fails_start_quoting_tritons_log(own_repo: Path) -> None:
    with (own_repo / MODEL / "1" / "model.py").open("a") as f:
        f.write("\ndef broken(:\n")
    server = ManagedTritonServer(
        TritonServerConfig(own_repo, log_path=own_repo.parent / "triton.log")
    )

    with pytest.raises(TritonStartError) as excinfo:
        server.start()

    message = str(excinfo.value)
    assert "exited with status" in excinfo.value.summary
    assert "SyntaxError" in message and "failed to load" in message, message
    assert not server.running
    assert _wait_all_gone(_pids_mentioning(str(own_repo)), 10) == []


def test_port_in_use_is_named_before_start(echo_repository: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = ManagedTritonServer(TritonServerConfig(echo_repository, grpc_port=port))
        with pytest.raises(PortInUseError, match=str(port)) as excinfo:
            server.start()
    assert excinfo.value.port == port


def test_port_in_use_is_recognised_in_tritons_log(
    monkeypatch: pytest.MonkeyPatch, own_repo: Path
) -> None:
    # Another process may take a port between our check and Triton's bind; skipping the check
    # reproduces that. HTTP binds after gRPC is already up, the case a gRPC-only probe misses.
    monkeypatch.setattr(server_module, "check_port_free", lambda host, port: None)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = ManagedTritonServer(
            TritonServerConfig(own_repo, http_port=port, log_path=own_repo.parent / "t.log")
        )
        with pytest.raises(PortInUseError, match=str(port)) as excinfo:
            server.start()
    assert excinfo.value.port == port
    assert "already in use" in str(excinfo.value)
    assert _wait_all_gone(_pids_mentioning(str(own_repo)), 10) == []


def test_stop_leaves_no_server_or_stub_process(own_repo: Path) -> None:
    server = ManagedTritonServer(
        TritonServerConfig(own_repo, log_path=own_repo.parent / "triton.log")
    )
    with server:
        pgid = server.pid
        members = process_group_members(pgid)
        stubs = [pid for pid in _pids_mentioning(str(own_repo)) if pid != pgid]
        assert stubs and set(stubs) <= set(members), (stubs, members)

    assert not server.running
    assert process_group_members(pgid) == []
    assert [pid for pid in members if is_process_alive(pid)] == []


def test_server_dies_when_its_parent_is_killed(own_repo: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from t2i_router.triton import ManagedTritonServer, TritonServerConfig
        from t2i_router.triton.server import process_group_members

        repo = Path({str(own_repo)!r})
        config = TritonServerConfig(repo, log_path=repo.parent / "triton.log")
        server = ManagedTritonServer(config)
        server.start()
        print(*process_group_members(server.pid), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert parent.returncode == -9, parent.stderr
    pids = [int(p) for p in parent.stdout.split()]
    assert len(pids) >= 2, parent.stdout
    # The server gets SIGKILL at once; the stub notices its parent is gone within seconds.
    survivors = _wait_all_gone(pids, 15)
    for pid in survivors:  # leave no orphan behind even when this fails
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def _triton_cli(run_dir: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``triton <command>`` in a process of its own, as a user would."""
    argv = [sys.executable, "-m", "t2i_router.triton.cli", "triton", command]
    argv += ["--run-dir", str(run_dir), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180)


def test_cli_start_status_stop(tmp_path: Path, own_repo: Path) -> None:
    run_dir = tmp_path / "run"
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]

    started = _triton_cli(run_dir, "start", "--model-repository", str(own_repo), *ports)
    assert started.returncode == 0, started.stderr
    grpc_url = started.stdout.strip()
    state = json.loads((run_dir / "triton.json").read_text())
    assert state["grpc_url"] == grpc_url
    try:
        # The server outlives the command that started it.
        assert is_process_alive(state["pid"])
        connect(grpc_url, ready_timeout_s=5)

        status = _triton_cli(run_dir, "status")
        assert status.returncode == 0, status.stderr
        assert grpc_url in status.stdout
        assert f"{MODEL}  version 1  READY" in status.stdout

        again = _triton_cli(run_dir, "start", "--model-repository", str(own_repo), *ports)
        assert again.returncode == 2
        assert "already runs" in again.stderr and len(again.stderr.strip().splitlines()) == 1

        stopped = _triton_cli(run_dir, "stop")
        assert stopped.returncode == 0, stopped.stderr
    finally:
        if is_process_alive(state["pid"]):
            os.killpg(state["pid"], signal.SIGKILL)
    assert process_group_members(state["pid"]) == []
    assert _wait_all_gone(_pids_mentioning(str(own_repo)), 10) == []
    assert not (run_dir / "triton.json").exists()

    after = _triton_cli(run_dir, "status")
    assert after.returncode == 2 and "no Triton" in after.stderr


def test_cli_start_failure_is_one_line(tmp_path: Path, own_repo: Path) -> None:
    (own_repo / MODEL / "1" / "model.py").write_text("def broken(:\n")
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    started = _triton_cli(tmp_path / "run", "start", "--model-repository", str(own_repo), *ports)
    assert started.returncode == 2
    [line] = started.stderr.strip().splitlines()
    assert line.startswith("t2i-router: error: tritonserver exited") and "triton.log" in line
    assert "SyntaxError" in (tmp_path / "run" / "triton.log").read_text()
