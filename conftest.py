"""Project-wide pytest hooks (tests/ and benchmarks/)."""

import shutil
import subprocess

import pytest


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips tests marked `gpu` on machines without an NVIDIA GPU."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _has_nvidia_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi lists none)")
    for item in gpu_items:
        item.add_marker(skip_gpu)
