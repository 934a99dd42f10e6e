"""The error hierarchy: one root, each class naming a real gRPC status code."""

import grpc
import pytest

from t2i_router import errors


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_names_a_grpc_status_code(name: str) -> None:
    error_type = getattr(errors, name)
    assert issubclass(error_type, errors.RouterError)
    assert error_type.grpc_code in grpc.StatusCode.__members__, error_type.grpc_code


def test_triton_start_errors_are_unavailable_and_port_errors_name_the_port() -> None:
    error = errors.PortInUseError(8001)
    assert isinstance(error, errors.TritonStartError)
    assert isinstance(error, errors.Unavailable)
    assert error.grpc_code == "UNAVAILABLE"
    assert error.port == 8001 and "8001" in str(error)


def test_triton_start_error_summary_is_the_first_line() -> None:
    error = errors.TritonStartError("tritonserver exited; log: /x.log\nE1122 failed to load")
    assert error.summary == "tritonserver exited; log: /x.log"
