"""Triton Inference Server: a managed tritonserver process, external servers, an async client.

Models plug in as folders of a model repository (``<model>/config.pbtxt`` + ``<model>/1/...``).
"""

from t2i_router.triton.client import ModelState, ModelStatistics, TritonClient, translate_error
from t2i_router.triton.launch.backoff import RestartPolicy
from t2i_router.triton.server import (
    ExternalTriton,
    ManagedTritonServer,
    TritonPorts,
    TritonServerConfig,
    connect,
    default_cache_dir,
)
from t2i_router.triton.supervisor import TritonSupervisor

__all__ = [
    "ExternalTriton",
    "ManagedTritonServer",
    "ModelState",
    "ModelStatistics",
    "RestartPolicy",
    "TritonClient",
    "TritonPorts",
    "TritonServerConfig",
    "TritonSupervisor",
    "connect",
    "default_cache_dir",
    "translate_error",
]
