"""``t2i-router triton start|status|stop``: a tritonserver that outlives the command.

``start`` launches Triton detached (its own session, no parent-death signal), waits until every
model is ready, records it in a state file (``<run dir>/triton.json``) and prints its gRPC
address; ``status`` and ``stop`` find it through that file. The run directory comes from
``--run-dir``, else ``$T2I_ROUTER_RUN_DIR``, else ``~/.cache/t2i-router/run``.

Every failure is a `t2i_router.errors.RouterError`; the shared boundary
(:func:`t2i_router.command.run_command`) prints its first line and exits with status 2. Mount the
commands with ``add_triton_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from t2i_router.argtypes import port, positive_float
from t2i_router.command import run_command
from t2i_router.errors import InvalidRequest, TritonStartError, Unavailable
from t2i_router.triton.client import ModelState, TritonClient
from t2i_router.triton.launch.config import TritonServerConfig, default_cache_dir
from t2i_router.triton.launch.process import (
    is_process_alive,
    process_start_ticks,
    terminate_process_group,
)
from t2i_router.triton.server import ManagedTritonServer

__all__ = ["TritonState", "add_triton_parser", "main"]

log = logging.getLogger(__name__)

RUN_DIR_ENV = "T2I_ROUTER_RUN_DIR"
STATE_FILE = "triton.json"


@dataclass(frozen=True)
class TritonState:
    """What ``start`` records about the server it left running.

    Attributes:
        pid: Process id (and process group id) of tritonserver.
        start_ticks: Its start time from /proc, so a reused pid is not mistaken for it.
        grpc_url: ``host:port`` of its gRPC service.
        http_url: ``host:port`` of its HTTP service.
        metrics_url: Its Prometheus page, or None.
        model_repository: The repository it serves.
        log_path: Where its output goes.
        stop_grace_s: How long ``stop`` waits after SIGTERM before SIGKILL.
    """

    pid: int
    start_ticks: int
    grpc_url: str
    http_url: str
    metrics_url: str | None
    model_repository: str
    log_path: str
    stop_grace_s: float

    def is_running(self) -> bool:
        """True when the recorded process still runs (same pid, same start time)."""
        return is_process_alive(self.pid) and process_start_ticks(self.pid) == self.start_ticks


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir is not None:
        return Path(args.run_dir)
    env = os.environ.get(RUN_DIR_ENV)
    return Path(env) if env else default_cache_dir() / "run"


def _read_state(path: Path) -> TritonState | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise Unavailable(f"cannot read Triton state {path}: {e}") from e
    try:
        return TritonState(**data)
    except TypeError as e:
        raise Unavailable(f"Triton state {path} is not from this version: {e}") from e


def _write_state(path: Path, state: TritonState) -> None:
    tmp = path.with_suffix(".json.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(path)  # atomic: a reader sees the old file or the new one
    except OSError as e:
        raise TritonStartError(f"cannot write Triton state {path}: {e}") from e


def cmd_triton_start(args: argparse.Namespace) -> None:
    """Starts a detached tritonserver and prints its gRPC address once it is ready."""
    run_dir = _run_dir(args)
    state_path = run_dir / STATE_FILE
    previous = _read_state(state_path)
    if previous is not None and previous.is_running():
        raise TritonStartError(
            f"Triton already runs at {previous.grpc_url} (pid {previous.pid}); "
            "run `t2i-router triton stop` first"
        )
    config = TritonServerConfig(
        model_repository=Path(args.model_repository),
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        startup_timeout_s=args.startup_timeout_s,
        stop_grace_s=args.stop_grace_s,
        log_verbose=args.log_verbose,
        log_path=run_dir / "triton.log",
        die_with_parent=False,  # it must outlive this command
    )
    server = ManagedTritonServer(config)
    server.start()  # its errors quote Triton's log after the first line, which the CLI prints
    state = TritonState(
        pid=server.pid,
        start_ticks=process_start_ticks(server.pid) or 0,
        grpc_url=server.grpc_url,
        http_url=server.http_url,
        metrics_url=server.metrics_url,
        model_repository=str(config.model_repository.resolve()),
        log_path=str(server.log_path),
        stop_grace_s=config.stop_grace_s,
    )
    try:
        _write_state(state_path, state)
    except TritonStartError:
        server.stop()
        raise
    log.info("Triton pid %d serves %s; log %s", state.pid, state.grpc_url, state.log_path)
    print(state.grpc_url)


async def _repository_index(grpc_url: str, timeout_s: float) -> list[ModelState]:
    async with TritonClient(grpc_url) as client:
        return await client.repository_index(timeout_s=timeout_s)


def cmd_triton_status(args: argparse.Namespace) -> None:
    """Prints the running server's address and each model's state."""
    state_path = _run_dir(args) / STATE_FILE
    state = _read_state(state_path)
    if state is None:
        raise Unavailable(f"no Triton started by t2i-router (no {state_path})")
    if not state.is_running():
        raise Unavailable(f"Triton pid {state.pid} is not running; see its log {state.log_path}")
    models = asyncio.run(_repository_index(state.grpc_url, args.timeout_s))
    print(f"grpc {state.grpc_url}  http {state.http_url}  pid {state.pid}  log {state.log_path}")
    for model in models:
        reason = f"  ({model.reason})" if model.reason else ""
        print(f"{model.name}  version {model.version or '-'}  {model.state or 'UNKNOWN'}{reason}")


def cmd_triton_stop(args: argparse.Namespace) -> None:
    """Stops the recorded server, waits for its process group to go, and removes the state."""
    state_path = _run_dir(args) / STATE_FILE
    state = _read_state(state_path)
    if state is None:
        print(f"no Triton recorded in {state_path}; nothing to stop")
        return
    if state.is_running():
        started_s = time.monotonic()
        terminate_process_group(state.pid, state.stop_grace_s)
        if state.is_running():
            raise Unavailable(f"Triton pid {state.pid} survived SIGKILL")
        print(f"stopped Triton pid {state.pid} in {time.monotonic() - started_s:.1f} s")
    else:
        print(f"Triton pid {state.pid} was not running; removed its state")
    state_path.unlink(missing_ok=True)


def cmd_triton_build_repo(args: argparse.Namespace) -> None:
    """Write the engines' model repository and export each engine's ONNX graph if stale."""
    from t2i_router.engines.engine import WeightsNotFoundError
    from t2i_router.engines.serving import ensure_onnx
    from t2i_router.triton.repository import ENGINE_NAMES, EngineModelSettings, build_repository

    settings = None  # the benchmarked defaults per engine
    customized = (
        args.max_queue_delay_us is not None
        or args.text_encoder != "inline"
        or args.max_batch_size != EngineModelSettings.max_batch_size
    )
    if customized:
        settings = EngineModelSettings(
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us or EngineModelSettings.max_queue_delay_us,
            text_encoder=args.text_encoder,
        )
    estimator = Path(args.estimator or Path(args.models_dir) / "quality_estimator")
    has_estimator = (estimator / "config.json").is_file()
    if has_estimator:
        from t2i_router.estimator.serving import ensure_onnx as ensure_estimator_onnx

        ensure_estimator_onnx(estimator)
    else:
        print(
            f"skipped quality_estimator: no estimator at {estimator} (train one with "
            "`t2i-router estimator train`, or name it with --estimator DIR)",
            file=sys.stderr,
        )
    repo = build_repository(
        args.out,
        args.models_dir,
        ENGINE_NAMES,
        settings,
        estimator_dir=estimator if has_estimator else None,
    )
    for name in ENGINE_NAMES:
        try:
            ensure_onnx(Path(args.models_dir) / name)
        except WeightsNotFoundError as e:
            e.add_note(f"train it with `t2i-router engines train {name}`")
            raise
    print(repo)


NGC_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


def _python_stub() -> Path | None:
    """pytriton's Python-backend stub for this interpreter (Triton 2.51 = 24.10), or None."""
    try:
        import pytriton
    except ImportError:
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = Path(pytriton.__file__).parent / "tritonserver" / "python_backend_stubs" / version
    stub = stub / "triton_python_backend_stub"
    return stub if stub.is_file() else None


def cmd_triton_build_gpu_repo(args: argparse.Namespace) -> None:
    """Write the GPU repository (TensorRT UNets behind Python BLS engines) and build its plans."""
    from t2i_router.engines import tensorrt
    from t2i_router.engines.engine import WeightsNotFoundError
    from t2i_router.engines.serving import ensure_onnx
    from t2i_router.triton.repository import (
        ENGINE_NAMES,
        build_gpu_repository,
        unet_max_batch_size,
        unet_plan_path,
    )

    if args.max_batch_size < 1:
        raise InvalidRequest(f"--max-batch-size is {args.max_batch_size}, must be >= 1")
    try:
        tensorrt.require_tensorrt()  # before minutes of ONNX export
    except tensorrt.TensorRTUnavailable as e:
        e.add_note(
            f"run `t2i-router triton build-gpu-repo` inside the NGC Triton container "
            f'({NGC_TRITON_IMAGE}), see README "GPU deployment (TensorRT)"'
        )
        raise
    onnx_paths = {}
    for name in ENGINE_NAMES:
        try:
            onnx_paths[name] = ensure_onnx(Path(args.models_dir) / name)
        except WeightsNotFoundError as e:
            e.add_note(f"train it with `t2i-router engines train {name}`")
            raise
    stub = None if args.no_python_stub else _python_stub()
    repo = build_gpu_repository(
        args.out,
        args.models_dir,
        ENGINE_NAMES,
        args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        python_stub=stub,
    )
    rows = unet_max_batch_size(args.max_batch_size)
    for name in ENGINE_NAMES:
        # Tuned for full batches (what dynamic batching makes under load).
        tensorrt.build_engine(
            onnx_paths[name],
            unet_plan_path(repo, name),
            min_batch=1,
            opt_batch=rows,
            max_batch=rows,
            fp16=not args.fp32,
            workspace_gib=args.workspace_gib,
        )
    print(repo)


def add_triton_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``triton start|status|stop`` to a CLI; each sets ``func`` to its command function.

    The command functions take the parsed ``argparse.Namespace`` and raise
    `t2i_router.errors.RouterError` on failure; run them with `t2i_router.command.run_command`.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--run-dir",
        default=None,
        help=f"where the state file and log live (default: ${RUN_DIR_ENV} or "
        f"{default_cache_dir() / 'run'})",
    )
    triton = subparsers.add_parser("triton", help="run a local Triton Inference Server")
    tsub = triton.add_subparsers(dest="triton_command", required=True)

    p = tsub.add_parser(
        "start", parents=[common], help="start Triton in the background; print its gRPC address"
    )
    p.add_argument("--model-repository", default="triton_repo", help="default: triton_repo")
    p.add_argument("--grpc-port", type=port, default=8001, help="0 picks a free port")
    p.add_argument("--http-port", type=port, default=8000, help="0 picks a free port")
    p.add_argument("--metrics-port", type=port, default=8002, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--startup-timeout-s", type=positive_float, default=120.0)
    p.add_argument("--stop-grace-s", type=positive_float, default=20.0)
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level")
    p.set_defaults(func=cmd_triton_start)

    p = tsub.add_parser(
        "build-repo", help="write triton_repo/ for the engines (+ the estimator), export ONNX"
    )
    p.add_argument("--out", default="triton_repo", help="default: triton_repo")
    p.add_argument("--models-dir", default="models", help="default: models")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument(
        "--max-queue-delay-us", type=int, help="default: per engine, from the load benchmark"
    )
    p.add_argument(
        "--text-encoder",
        choices=("inline", "bls"),
        default="inline",
        help="inline: each engine holds MiniLM; bls: one shared text_encoder model",
    )
    p.add_argument(
        "--estimator",
        metavar="DIR",
        help="quality estimator folder served as quality_estimator when it holds a model "
        "(default: MODELS_DIR/quality_estimator)",
    )
    p.set_defaults(func=cmd_triton_build_repo)

    p = tsub.add_parser(
        "build-gpu-repo",
        help="write triton_repo_gpu/ (TensorRT UNets + BLS engines), build plans; GPU only",
    )
    p.add_argument("--out", default="triton_repo_gpu", help="default: triton_repo_gpu")
    p.add_argument("--models-dir", default="models", help="default: models")
    p.add_argument("--max-batch-size", type=int, default=64, help="images per engine execute")
    p.add_argument(
        "--max-queue-delay-us", type=int, help="default: per engine, from the load benchmark"
    )
    p.add_argument("--fp32", action="store_true", help="build FP32 plans (default: FP16 allowed)")
    p.add_argument("--workspace-gib", type=positive_float, default=2.0)
    p.add_argument(
        "--no-python-stub",
        action="store_true",
        help="do not copy pytriton's Python-backend stub for this Python into the engine models",
    )
    p.set_defaults(func=cmd_triton_build_gpu_repo)

    p = tsub.add_parser("status", parents=[common], help="print address and model readiness")
    p.add_argument("--timeout-s", type=positive_float, default=10.0)
    p.set_defaults(func=cmd_triton_status)

    p = tsub.add_parser("stop", parents=[common], help="stop the Triton that `start` started")
    p.set_defaults(func=cmd_triton_stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the triton commands alone: ``python -m t2i_router.triton.cli triton start``."""
    parser = argparse.ArgumentParser(prog="t2i-router")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_triton_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
