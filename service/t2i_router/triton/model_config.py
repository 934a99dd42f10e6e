"""Triton model configurations as ``ModelConfig`` protobufs, written as config.pbtxt text.

Every config.pbtxt the builders write comes from here: a ``model_config_pb2.ModelConfig``
filled field by field and printed by ``google.protobuf.text_format``, so a misspelt field or a
bad enum fails when the repository is built, not when Triton loads it, and values are quoted
by protobuf (no hand-made escaping of parameter strings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

__all__ = [
    "ModelConfig",
    "TensorSpec",
    "batched_model",
    "parse_pbtxt",
    "to_pbtxt",
]

ModelConfig = pb.ModelConfig


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a batched model, as Triton's config declares it.

    Attributes:
        name: the tensor's name in the graph.
        data_type: Triton's name for its type (``TYPE_FP32``).
        dims: its shape without the leading batch axis (``()`` for one value per row);
            -1 marks a dynamic axis.
        optional: an input a request may leave out.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False


def _fill(tensor, spec: TensorSpec) -> None:
    tensor.name = spec.name
    tensor.data_type = pb.DataType.Value(spec.data_type)
    if spec.dims:
        tensor.dims.extend(spec.dims)
    else:
        # With max_batch_size > 0 Triton strips the batch axis from dims, and dims may not be
        # empty: a tensor of shape [batch] (timestep) is declared as [1] per row, and reshape
        # hands the model [batch] (clients send [batch, 1]). Triton's documented idiom.
        tensor.dims.append(1)
        tensor.reshape.SetInParent()


def batched_model(
    name: str,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
    backend: str = "",
    platform: str = "",
    instance_kind: str = "KIND_CPU",
    instances: int = 1,
    dynamic_batching: bool = True,
    max_queue_delay_us: int = 0,
    parameters: Mapping[str, str] | None = None,
) -> pb.ModelConfig:
    """A model that batches along its first axis.

    Args:
        name: the model's name (its folder in the repository).
        inputs, outputs: tensors per row (without the batch axis).
        max_batch_size: rows Triton may merge into one execution.
        backend: ``"python"`` (or empty with ``platform``).
        platform: ``"tensorrt_plan"`` (or empty with ``backend``).
        instance_kind: ``KIND_CPU`` or ``KIND_GPU``.
        instances: model instances.
        dynamic_batching: let Triton merge concurrent requests.
        max_queue_delay_us: how long dynamic batching waits to fill a batch (0 = Triton's
            default, not written).
        parameters: string parameters, the model's settings (``parameters {}``).
    """
    config = pb.ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend:
        config.backend = backend
    if platform:
        config.platform = platform
    for spec in inputs:
        _fill(config.input.add(optional=spec.optional), spec)
    for spec in outputs:
        _fill(config.output.add(), spec)
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(instance_kind), count=instances)
    if dynamic_batching:
        config.dynamic_batching.SetInParent()
        if max_queue_delay_us:
            config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    return config


def to_pbtxt(config: pb.ModelConfig, header: str = "") -> str:
    """config.pbtxt text: ``header`` lines as ``#`` comments, then the message (map entries
    such as parameters sorted by key, so the text is deterministic)."""
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comments + text_format.MessageToString(config)


def parse_pbtxt(text: str) -> pb.ModelConfig:
    """Parse config.pbtxt text (comments allowed) into a ``ModelConfig``."""
    return text_format.Parse(text, pb.ModelConfig())
