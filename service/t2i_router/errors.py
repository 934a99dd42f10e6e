"""The exception root of t2i_router and its narrow subclasses.

Every error the service raises on purpose is a `RouterError`. Each subclass names the gRPC status
code it maps to, as the string name of a ``grpc.StatusCode`` member (``"INTERNAL"``), so that this
module imports no grpc; the servicer turns it into a status in one place with
``grpc.StatusCode[err.grpc_code]``. Third-party errors are wrapped where they enter
(``raise Unavailable(...) from e``), so callers never catch tritonclient or grpc types.

Errors of one part of the package live with it and subclass a category here, keeping the builtin
base its callers catch (``class PromptError(InvalidRequest, ValueError)``,
``class WeightsNotFoundError(MissingFileError)``); tests/unit/test_errors.py walks the package
and fails on an exception class outside this root. A plain ``ValueError`` is left only for
misuse of an internal API (an array of the wrong shape): a bug, which a servicer answers with
INTERNAL like any exception that is not a `RouterError`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InternalError",
    "InvalidRequest",
    "MissingFileError",
    "ModelError",
    "NotFound",
    "PortInUseError",
    "ResourceExhausted",
    "RouterError",
    "TritonStartError",
    "Unavailable",
]


class RouterError(Exception):
    """Root of every error t2i_router raises on purpose.

    Attributes:
        grpc_code: Name of the ``grpc.StatusCode`` member a servicer answers with.
    """

    grpc_code: str = "INTERNAL"


class InvalidRequest(RouterError):
    """The caller sent something unusable (bad prompt, mismatched lengths, a value out of range)."""

    grpc_code = "INVALID_ARGUMENT"


class ResourceExhausted(RouterError):
    """A queue, quota or budget is full; the caller may retry later."""

    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(RouterError):
    """A backend (Triton, a model) cannot be reached or is not ready; retrying may succeed."""

    grpc_code = "UNAVAILABLE"


class DeadlineExceeded(RouterError):
    """The request's deadline passed before an answer came back."""

    grpc_code = "DEADLINE_EXCEEDED"


class ModelError(RouterError):
    """A model ran and failed (an exception in the backend, malformed output)."""

    grpc_code = "INTERNAL"


class NotFound(RouterError):
    """Something asked for does not exist (an engine's weights, a file, a model)."""

    grpc_code = "NOT_FOUND"


class FailedPrecondition(RouterError):
    """The system is not in a state to do what was asked; retrying will not help until it is.

    For example: a device or library missing here, bad configuration, a checkpoint that does not
    fit the run.
    """

    grpc_code = "FAILED_PRECONDITION"


class InternalError(RouterError):
    """A bug: a guarantee of the package did not hold (no fault of the caller or a model)."""

    grpc_code = "INTERNAL"


class ConfigError(FailedPrecondition, ValueError):
    """A configuration value (a Triton model parameter, a server setting) is missing or bad.

    The message quotes the value. Also a ``ValueError``, so callers that catch that keep working.
    """


class MissingFileError(NotFound, FileNotFoundError):
    """A file the package needs (weights, an ONNX graph, a plan, a config) does not exist.

    Also a ``FileNotFoundError``, so callers that catch that keep working.
    """


class TritonStartError(Unavailable):
    """A tritonserver could not be started or did not become ready.

    The first line of the message says what happened; the lines after it, if any, quote the end
    of Triton's log.
    """

    @property
    def summary(self) -> str:
        """The first line of the message, for one-line reports such as the CLI's."""
        return str(self).split("\n", 1)[0]


class PortInUseError(TritonStartError):
    """A port asked for is already taken by another process.

    Attributes:
        port: The port that is in use.
    """

    def __init__(self, port: int, message: str | None = None) -> None:
        self.port = port
        super().__init__(message or f"port {port} is already in use")
