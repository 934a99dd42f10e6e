"""The Triton Python-backend side of t2i-router's models: pb_utils requests <-> pure servers.

Only this module (and the thin ``model.py`` templates) touches ``triton_python_backend_utils``,
which exists only inside Triton and is therefore passed in as ``pb_utils``. The servers it
delegates to (``t2i_router.estimator.serving``) are tested without Triton.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from t2i_router.errors import InvalidRequest, RouterError

log = logging.getLogger(__name__)

__all__ = [
    "ESTIMATOR_INPUT",
    "ESTIMATOR_OUTPUT",
    "execute_estimator",
    "load_estimator",
    "model_parameters",
    "triton_error",
]

ESTIMATOR_INPUT = "PROMPT"
ESTIMATOR_OUTPUT = "Q"
# Our errors -> pb_utils.TritonError codes (a request's fault vs the model's).
_TRITON_CODES = {InvalidRequest: "INVALID_ARG"}


def model_parameters(args: dict) -> dict[str, str]:
    """A Python model's ``parameters {}`` as strings, from ``initialize(args)``."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def triton_error(error: RouterError, pb_utils):
    """``pb_utils.TritonError`` for one of our errors, with its message and code."""
    name = next((c for t, c in _TRITON_CODES.items() if isinstance(error, t)), "INTERNAL")
    return pb_utils.TritonError(str(error), getattr(pb_utils.TritonError, name))


def load_estimator(args: dict):
    """The :class:`~t2i_router.estimator.serving.EstimatorServer` of a ``quality_estimator``
    model's ``initialize(args)``: settings from its parameters, model_dir relative to its
    folder; fails when the declared choices or metrics are not the model's."""
    from t2i_router.estimator.serving import EstimatorServer, EstimatorServingConfig

    params = model_parameters(args)
    base = f"{args['model_repository']}"
    server = EstimatorServer.from_serving_config(
        EstimatorServingConfig.from_parameters(params, base)
    )
    if "choices" in params or "metrics" in params:
        server.check_declared(
            params.get("choices", "").split(","), params.get("metrics", "").split(",")
        )
    return server


def execute_estimator(server, requests: list, pb_utils) -> list:
    """``execute`` of ``quality_estimator``: PROMPT (B, 1) bytes in, Q (B, M, K) FP32 out, one
    response per request, a bad request answered with its own error."""
    prompts = []
    for request in requests:
        tensor = pb_utils.get_input_tensor_by_name(request, ESTIMATOR_INPUT)
        prompts.append(np.empty((0, 1), object) if tensor is None else tensor.as_numpy())
    responses = []
    for result in server.run(prompts):
        if isinstance(result, RouterError):
            responses.append(pb_utils.InferenceResponse(error=triton_error(result, pb_utils)))
        else:
            q = np.ascontiguousarray(result, np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(ESTIMATOR_OUTPUT, q)]))
    return responses
