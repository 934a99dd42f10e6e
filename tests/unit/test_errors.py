"""The error hierarchy: one root, each class naming a real gRPC status code."""

import argparse
import importlib
import pkgutil
import types

import grpc
import pytest

from t2i_router import errors
from t2i_router.command import run_command


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


# --- every exception class of the package is under the root --------------------------------

# Imported only inside the process that needs them (Triton's Python backend, a GPU host): a
# module that imports one of these at the top is skipped here, not failed.
OPTIONAL_MODULES = {"tensorrt", "triton_python_backend_utils"}


def _package_modules() -> list[str]:
    import t2i_router

    return sorted(m.name for m in pkgutil.walk_packages(t2i_router.__path__, "t2i_router."))


def _classes_outside_the_root(module: types.ModuleType) -> list[str]:
    """Exception classes defined in ``module`` that are not `RouterError`s, by qualified name."""
    return [
        f"{module.__name__}.{obj.__qualname__}({', '.join(b.__name__ for b in obj.__bases__)})"
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and obj.__module__ == module.__name__
        and not issubclass(obj, errors.RouterError)
    ]


def test_the_walk_finds_the_modules_that_define_errors() -> None:
    names = _package_modules()
    for name in ("t2i_router.cli", "t2i_router.triton.backend", "t2i_router.triton.server"):
        assert name in names


@pytest.mark.parametrize("name", _package_modules())
def test_every_exception_class_of_the_package_is_a_router_error(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name not in OPTIONAL_MODULES:
            raise
        pytest.skip(f"{name} needs {e.name}, which is not installed here")
    assert _classes_outside_the_root(module) == [], "derive them from t2i_router.errors"


def test_the_walk_names_an_exception_class_outside_the_root() -> None:
    module = types.ModuleType("t2i_router.fake")
    exec(  # a module with one class inside the root and one outside
        "from t2i_router.errors import InvalidRequest\n"
        "class Fine(InvalidRequest, ValueError): pass\n"
        "class Stray(RuntimeError): pass\n",
        module.__dict__,
    )
    assert _classes_outside_the_root(module) == ["t2i_router.fake.Stray(RuntimeError)"]


# --- each class of the package maps to its gRPC code and keeps its builtin base -------------


@pytest.mark.parametrize(
    ("path", "category", "code", "builtin"),
    [
        ("world.spec.PromptError", errors.InvalidRequest, "INVALID_ARGUMENT", ValueError),
        ("world.renderer.RenderError", errors.InternalError, "INTERNAL", RuntimeError),
        ("imageio.ImageFileError", errors.InvalidRequest, "INVALID_ARGUMENT", ValueError),
        ("cli.CliError", errors.InvalidRequest, "INVALID_ARGUMENT", Exception),
        ("engines.sampler.SamplingError", errors.InvalidRequest, "INVALID_ARGUMENT", ValueError),
        ("engines.serving.BadRequest", errors.InvalidRequest, "INVALID_ARGUMENT", ValueError),
        ("engines.serving.EngineFailure", errors.ModelError, "INTERNAL", RuntimeError),
        ("triton.backend.BlsError", errors.ModelError, "INTERNAL", RuntimeError),
        ("engines.tensorrt.TensorRTError", errors.ModelError, "INTERNAL", RuntimeError),
        (
            "engines.tensorrt.TensorRTUnavailable",
            errors.FailedPrecondition,
            "FAILED_PRECONDITION",
            RuntimeError,
        ),
        (
            "engines.recipe.TrainingError",
            errors.FailedPrecondition,
            "FAILED_PRECONDITION",
            RuntimeError,
        ),
        (
            "engines.engine.WeightsNotFoundError",
            errors.MissingFileError,
            "NOT_FOUND",
            FileNotFoundError,
        ),
        (
            "engines.text_encoder.EncoderNotFoundError",
            errors.MissingFileError,
            "NOT_FOUND",
            FileNotFoundError,
        ),
        ("errors.MissingFileError", errors.NotFound, "NOT_FOUND", FileNotFoundError),
        ("errors.ConfigError", errors.FailedPrecondition, "FAILED_PRECONDITION", ValueError),
        ("errors.InternalError", errors.RouterError, "INTERNAL", Exception),
    ],
)
def test_each_error_maps_to_its_grpc_code_and_keeps_its_builtin_base(
    path: str, category: type, code: str, builtin: type
) -> None:
    module, _, name = f"t2i_router.{path}".rpartition(".")
    error_type = getattr(importlib.import_module(module), name)
    assert issubclass(error_type, category) and issubclass(error_type, builtin)
    assert error_type.grpc_code == code
    assert grpc.StatusCode[error_type.grpc_code].name == code


def test_engine_server_errors_keep_their_triton_codes() -> None:
    from t2i_router.engines.serving import BadRequest, EngineFailure

    assert (BadRequest.triton_code, EngineFailure.triton_code) == ("INVALID_ARG", "INTERNAL")


# --- the boundary the command lines share -----------------------------------------------------


def test_run_command_prints_one_line_with_notes_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(args: argparse.Namespace) -> None:
        error = errors.TritonStartError("tritonserver exited; log: /x.log\nE1122 failed to load")
        error.add_note("see the log")
        raise error

    assert run_command(fail, argparse.Namespace()) == 2
    err = capsys.readouterr().err
    assert err == "t2i-router: error: tritonserver exited; log: /x.log; see the log\n"


def test_run_command_passes_success_and_leaves_bugs_their_traceback() -> None:
    assert run_command(lambda args: None, argparse.Namespace()) == 0

    def bug(args: argparse.Namespace) -> None:
        raise KeyError("not a user error")

    with pytest.raises(KeyError):
        run_command(bug, argparse.Namespace())
