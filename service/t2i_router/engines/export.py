"""Export a denoiser to ONNX (dynamic batch) and run it with ONNX Runtime on the CPU.

The ONNX graph has the :class:`~t2i_router.engines.unet.Denoiser` signature:
``sample (B, 3, 32, 32) f32, timestep (B,) i64, tokens (B, L, 384) f32, mask (B, L) f32 ->
velocity (B, 3, 32, 32) f32``. The same graph feeds the TensorRT builder on GPUs
(:mod:`t2i_router.engines.tensorrt`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from t2i_router.engines.text_encoder import EMBED_DIM, MAX_TOKENS
from t2i_router.engines.unet import Denoiser
from t2i_router.errors import MissingFileError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("sample", "timestep", "tokens", "mask")
OUTPUT_NAME = "velocity"
# The graph's dtype per input (the one table: ONNX Runtime feeds and Triton BLS requests use it).
INPUT_DTYPES: dict[str, type[np.generic]] = {
    "sample": np.float32,
    "timestep": np.int64,
    "tokens": np.float32,
    "mask": np.float32,
}
OPSET = 18


def export_onnx(model: Denoiser, path: str | Path, max_tokens: int = MAX_TOKENS) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis; returns the path.

    Uses the TorchScript exporter: on these UNets it takes ~3 s where the dynamo exporter
    takes 30-45 s. Its graphs' velocity matches torch within 1e-5 absolute (1.5e-6 to 6.2e-6
    measured; docs/engines.md, "ONNX export").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    b = 2
    example = (
        torch.randn(b, 3, 32, 32),
        torch.randint(0, 1000, (b,), dtype=torch.int64),
        torch.randn(b, max_tokens, EMBED_DIM),
        torch.ones(b, max_tokens),
    )
    dynamic_axes = {name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings of the exporter
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    log.info("exported %s", path)
    return path


class OnnxDenoiser:
    """ONNX Runtime session behind the denoiser signature (torch in, torch out)."""

    def __init__(self, path: str | Path, threads: int = 0, spinning: bool = True) -> None:
        """Open ``path``; ``threads`` 0 lets ONNX Runtime choose, ``spinning`` False keeps idle
        workers from busy-waiting (a large throughput gain on a host shared with other jobs)."""
        import onnxruntime as ort

        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"no ONNX model at {path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        # A graph may drop an input it never reads (cross-attention models ignore the mask).
        self.input_names = {i.name for i in self.session.get_inputs()}

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        given = {"sample": sample, "timestep": timestep, "tokens": tokens, "mask": mask}
        feeds = {
            name: given[name].numpy().astype(INPUT_DTYPES[name], copy=False)
            for name in INPUT_NAMES
            if name in self.input_names
        }
        (out,) = self.session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(out)
