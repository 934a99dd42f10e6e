"""Triton Python-backend test model `echo_image` (see its config.pbtxt for the contract).

A test fixture, so its logic is inline. An empty prompt fails its own request with INVALID_ARG
and the prompt "!fail" with INTERNAL, while the other requests of the same batch succeed.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

IMAGE_SHAPE = (32, 32, 3)


def _optional(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        delay_ms = parameters.get("execute_delay_ms", {}).get("string_value", "0")
        self.execute_delay_s = float(delay_ms) / 1000

    def execute(self, requests):
        time.sleep(self.execute_delay_s)
        return [self._one(request) for request in requests]

    def _one(self, request):
        prompts = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy()  # (B, 1) bytes
        seeds = pb_utils.get_input_tensor_by_name(request, "SEED").as_numpy()  # (B, 1) int64
        batch = prompts.shape[0]
        steps = _optional(request, "STEPS", np.zeros((batch, 1), np.int32))
        guidance = _optional(request, "GUIDANCE", np.zeros((batch, 1), np.float32))
        texts = [p.decode("utf-8") for p in prompts[:, 0]]
        if any(not text for text in texts):
            error = pb_utils.TritonError("PROMPT is empty", pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        if "!fail" in texts:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError("failure requested"))
        image = np.empty((batch, *IMAGE_SHAPE), np.uint8)  # (B, 32, 32, 3)
        image[..., 0] = (seeds % 256).astype(np.uint8)[:, :, None]
        image[..., 1] = (steps % 256).astype(np.uint8)[:, :, None]
        image[..., 2] = (np.round(guidance * 10) % 256).astype(np.uint8)[:, :, None]
        return pb_utils.InferenceResponse([pb_utils.Tensor("IMAGE", image)])
