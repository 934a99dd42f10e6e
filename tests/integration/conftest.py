"""Fixtures that start real servers: a tritonserver serving test models from a temporary repo."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from t2i_router.triton import ManagedTritonServer, TritonServerConfig

TEST_MODELS = Path(__file__).parent / "triton_models"


def make_repository(root: Path, models: tuple[str, ...] = ("echo_image",)) -> Path:
    """Copies test models from tests/integration/triton_models into ``root`` (a repository)."""
    root.mkdir(parents=True, exist_ok=True)
    for model in models:
        shutil.copytree(TEST_MODELS / model, root / model)
    return root


@pytest.fixture(scope="session")
def echo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding only `echo_image`."""
    return make_repository(tmp_path_factory.mktemp("echo_repo"))


@pytest.fixture
def own_repo(tmp_path: Path) -> Path:
    """A fresh repository with `echo_image`, for a test that changes it or runs its own server."""
    return make_repository(tmp_path / "repo")


@pytest.fixture(scope="session")
def triton(
    echo_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedTritonServer]:
    """One tritonserver on free ports for the session (a start costs several seconds)."""
    log_path = tmp_path_factory.mktemp("triton_logs") / "tritonserver.log"
    config = TritonServerConfig(model_repository=echo_repository, log_path=log_path)
    with ManagedTritonServer(config) as server:
        yield server
