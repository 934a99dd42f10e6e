"""Managed tritonserver pieces that need no Triton: config, ports, environment, logs, processes."""

import mmap
import os
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from t2i_router.errors import PortInUseError
from t2i_router.triton import TritonServerConfig
from t2i_router.triton.launch.environment import triton_environment
from t2i_router.triton.launch.logs import PORT_IN_USE_RE, read_log_tail
from t2i_router.triton.launch.ports import check_port_free, pick_free_ports
from t2i_router.triton.launch.process import (
    is_process_alive,
    process_group_members,
    python_backend_shm_files,
    terminate_process_group,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every Triton model folder in the project: the served repository and the test models.
MODEL_CONFIGS = sorted(
    [
        *REPO_ROOT.glob("triton_repo/*/config.pbtxt"),
        *REPO_ROOT.glob("tests/integration/triton_models/*/config.pbtxt"),
    ]
)


@pytest.mark.parametrize("field", ["grpc_port", "http_port", "metrics_port"])
def test_config_rejects_out_of_range_ports(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} is 70000"):
        TritonServerConfig(Path("repo"), **{field: 70000})


def test_config_rejects_non_positive_startup_timeout() -> None:
    with pytest.raises(ValueError, match="startup_timeout_s is 0"):
        TritonServerConfig(Path("repo"), startup_timeout_s=0)


def test_port_check_names_a_port_held_by_a_listener() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError, match=str(port)) as excinfo:
            check_port_free("127.0.0.1", port)
    assert excinfo.value.port == port
    check_port_free("127.0.0.1", port)  # free again once the holder closed


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = pick_free_ports("127.0.0.1", 3)
    assert len(set(ports)) == 3 and 0 not in ports
    for port in ports:
        check_port_free("127.0.0.1", port)


def test_port_in_use_lines_of_triton_are_recognised() -> None:
    # Lines as Triton 2.51 writes them (from real logs).
    for line, port in [
        ("E1122 00:13:23.913245 5163 main.cc:245] \"failed to start GRPC service: Unavailable - "
         "Socket '127.0.0.1:41985' already in use \"", 41985),
        ("E1122 00:13:26.995417 5233 main.cc:257] \"failed to start HTTP service: Unavailable - "
         "Socket '127.0.0.1:55397' already in use \"", 55397),
    ]:  # fmt: skip
        match = PORT_IN_USE_RE.search(line)
        assert match is not None and int(match.group(1)) == port


def test_log_tail_drops_the_options_table(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    log.write_text(
        "E1122 failed to load 'echo_image': SyntaxError\n"
        "I1122 tritonserver.cc:2598]\n"
        "+--------+-------+\n"
        "| Option | Value |\n"
        "+--------+-------+\n"
        "| server_id | triton |\n"
        "+--------+-------+\n"
        "\n"
        "error: creating server: Internal - failed to load all models\n"
    )
    tail = read_log_tail(log).splitlines()
    assert tail == [
        "E1122 failed to load 'echo_image': SyntaxError",
        "I1122 tritonserver.cc:2598]",
        "error: creating server: Internal - failed to load all models",
    ]
    assert read_log_tail(log, lines=1) == tail[-1]
    assert read_log_tail(tmp_path / "missing.log") == ""


def test_environment_puts_venv_and_libdir_first() -> None:
    env = triton_environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    path = env["PATH"].split(":")
    assert path[0] == str(Path(sys.prefix) / "bin") and path[-1] == "/usr/bin"
    libs = env["LD_LIBRARY_PATH"].split(":")
    assert libs[0] == sysconfig.get_config_var("LIBDIR")
    assert libs[1].endswith("nvidia_pytriton.libs") and libs[-1] == "/opt/lib"


def test_terminate_process_group_kills_leader_and_children() -> None:
    # A leader that ignores SIGTERM, with a child in its group: both must go.
    leader = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    deadline = time.monotonic() + 5
    while len(process_group_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    members = process_group_members(leader.pid)
    assert len(members) == 2, members

    terminate_process_group(leader.pid, grace_s=0.2, is_alive=lambda: leader.poll() is None)

    assert leader.poll() is not None
    assert process_group_members(leader.pid) == []
    assert not any(is_process_alive(pid) for pid in members)


def test_python_backend_shm_files_are_the_backends_regions_a_process_maps() -> None:
    tag = uuid.uuid4()
    region = Path(f"/dev/shm/triton_python_backend_shm_region_{tag}")
    other = Path(f"/dev/shm/client_region_{tag}")  # a client's region: not ours to remove
    maps = []
    try:
        for path in (region, other):
            path.write_bytes(b"\0" * 4096)
            with path.open("r+b") as f:
                maps.append(mmap.mmap(f.fileno(), 4096))
        found = python_backend_shm_files([os.getpid(), 999_999_999])  # a pid that is not there
        assert region in found and other not in found
    finally:
        for m in maps:
            m.close()
        region.unlink(missing_ok=True)
        other.unlink(missing_ok=True)
    assert region not in python_backend_shm_files([os.getpid()])


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.parent.name)
def test_model_config_parses_and_names_its_folder(path: Path) -> None:
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert config.name == path.parent.name
    assert any(child.is_dir() and child.name.isdigit() for child in path.parent.iterdir())


def test_echo_image_config_has_the_engine_contract() -> None:
    path = REPO_ROOT / "tests/integration/triton_models/echo_image/config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    dtype = model_config_pb2.DataType.Name
    inputs = {i.name: (dtype(i.data_type), list(i.dims), i.optional) for i in config.input}
    assert inputs == {
        "PROMPT": ("TYPE_STRING", [1], False),
        "SEED": ("TYPE_INT64", [1], False),
        "STEPS": ("TYPE_INT32", [1], True),
        "GUIDANCE": ("TYPE_FP32", [1], True),
    }
    outputs = {o.name: (dtype(o.data_type), list(o.dims)) for o in config.output}
    assert outputs == {"IMAGE": ("TYPE_UINT8", [32, 32, 3])}
    assert config.max_batch_size == 32 and config.HasField("dynamic_batching")
