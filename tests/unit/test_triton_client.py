"""The Triton client's thin edges: error translation, statistics parsing, input checks."""

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from t2i_router.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelError,
    ResourceExhausted,
    RouterError,
    Unavailable,
)
from t2i_router.triton import ModelStatistics, TritonClient, translate_error


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("StatusCode.UNAVAILABLE", Unavailable),
        ("StatusCode.NOT_FOUND", Unavailable),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
        ("StatusCode.INVALID_ARGUMENT", InvalidRequest),
        ("StatusCode.RESOURCE_EXHAUSTED", ResourceExhausted),
        ("StatusCode.INTERNAL", ModelError),
        ("StatusCode.UNKNOWN", ModelError),
        (None, ModelError),  # raised inside tritonclient, no status
    ],
)
def test_translate_error_decides_by_status_code(
    status: str | None, expected: type[RouterError]
) -> None:
    # The message says "unavailable" whatever the status, so substring matching would be wrong.
    source = InferenceServerException(msg="model unavailable?", status=status)
    error = translate_error(source, "edge_small at 127.0.0.1:8001")
    assert type(error) is expected
    assert "edge_small at 127.0.0.1:8001" in str(error) and "model unavailable?" in str(error)


def test_statistics_parse_omitted_zeros_and_string_int64() -> None:
    stats = {
        "model_stats": [
            {
                "name": "echo_image",
                "version": "1",
                "inference_count": "25",
                "execution_count": "4",
                "inference_stats": {"success": {"count": "23", "ns": "1"}, "fail": {"count": "2"}},
            },
            {"name": "echo_image", "version": "2"},  # never ran: every counter left out
        ]
    }
    assert ModelStatistics.from_json(stats) == ModelStatistics(25, 4, 23, 2)
    assert ModelStatistics.from_json({}) == ModelStatistics(0, 0, 0, 0)


@pytest.mark.parametrize(
    ("prompts", "seeds", "kwargs", "message"),
    [
        ([], [], {}, "prompts is empty"),
        ("a red circle", [1], {}, "one string"),
        (["a", "b"], [1], {}, r"seeds has shape \(1,\), expected \(2,\)"),
        (["a"], [1.5], {}, "expected integers"),
        ([b"a"], [1], {}, "not str"),
        (["a"], [1], {"steps": 0}, "steps must be integers >= 1"),
        (["a", "b"], [1, 2], {"steps": [4]}, r"steps has shape \(1,\)"),
        (["a"], [1], {"guidance": float("nan")}, "guidance must be finite"),
    ],
)
async def test_generate_rejects_bad_arguments_before_sending(
    prompts: object, seeds: object, kwargs: dict, message: str
) -> None:
    # Port 9 (discard) is never a Triton: reaching the network would fail differently.
    async with TritonClient("127.0.0.1:9") as client:
        with pytest.raises(InvalidRequest, match=message):
            await client.generate("echo_image", prompts, seeds, **kwargs)  # type: ignore[arg-type]


def test_engine_inputs_are_batch_first_columns() -> None:
    inputs = TritonClient._engine_inputs(["a", "b"], np.array([1, 2]), 4, [1.0, 2.0])
    assert [(i.name(), i.datatype(), i.shape()) for i in inputs] == [
        ("PROMPT", "BYTES", [2, 1]),
        ("SEED", "INT64", [2, 1]),
        ("STEPS", "INT32", [2, 1]),
        ("GUIDANCE", "FP32", [2, 1]),
    ]
