# Over 400 lines on purpose: every router subcommand and its flags in one place.
"""``t2i-router serve | demo | generate | route | budget``: the router, its demo and its clients.

``serve`` loads the trained estimator (``--estimator``, default models/quality_estimator; it
stops with a one-line error naming the folder when there is none; with ``--estimator-runtime
triton`` it uses the repository's ``quality_estimator`` model instead), starts the managed Triton
on ``triton_repo/`` and restarts it when it dies (or checks ``--triton-url``, and reconnects to it
when it comes back), serves gRPC and prints ``serving on HOST:PORT``
once health is SERVING. SIGTERM or SIGINT stops it gracefully and stops the managed Triton, so
no process is left behind. Settings: defaults, then ``T2I_ROUTER_<FIELD>`` (see
`RouterConfig`), then flags.

Security (docs/operations.md): ``serve`` binds loopback unless ``--host`` says otherwise, and a
non-loopback host needs TLS (``--tls-cert``, ``--tls-key``; ``--tls-client-ca`` requires client
certificates) or ``--insecure``. Bearer tokens come from ``--token-file`` /
``$T2I_ROUTER_TOKEN`` (generation) and ``--admin-token-file`` / ``$T2I_ROUTER_ADMIN_TOKEN``.

``demo`` starts Triton and the router itself, routes a shifting stream of sampled prompts at a
target cloud rate and writes docs/demo/ (`router.demo`).

The clients call a running router through the stubs generated from the proto (``--address``,
default ``$T2I_ROUTER_ADDRESS`` or 127.0.0.1:50051) and print JSON. They send the token of
``--token-file`` or ``$T2I_ROUTER_TOKEN`` (``budget set``: ``$T2I_ROUTER_ADMIN_TOKEN`` first)
and speak TLS when given ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for mTLS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from t2i_router.argtypes import (
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    unit_interval,
)
from t2i_router.errors import RouterError, Unavailable
from t2i_router.router.config import ESTIMATOR_RUNTIMES

__all__ = ["add_router_parser"]

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:50051"
_TARGETS = {"auto": 1, "edge": 2, "cloud": 3}


class RpcFailed(RouterError):
    """A call to the router failed; the message names the status code."""


# ----- serve


def cmd_serve(args: argparse.Namespace) -> None:
    from t2i_router.router.estimator import load_estimator
    from t2i_router.router.logs import JsonLogFormatter
    from t2i_router.router.server import RouterConfig, triton_supervisor
    from t2i_router.triton import connect

    if args.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLogFormatter())
    config = RouterConfig.from_env(
        host=args.host,
        port=args.port,
        insecure=args.insecure or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token_file=args.token_file,
        admin_token_file=args.admin_token_file,
        max_queue=args.max_queue,
        max_message_bytes=args.max_message_bytes,
        limits={"max_concurrent_per_client": args.max_concurrent_per_client},
        triton_url=args.triton_url,
        triton_repo=args.triton_repo,
        state_dir=args.state_dir,
        **{k: getattr(args, k) for k in ("budget_store", "budget_key_prefix", "metrics_host")},
        metrics_port=args.metrics_port,
        estimator_dir=args.estimator,
        estimator_runtime=args.estimator_runtime,
        target_rate=args.target_rate,
        track_every=args.track_every,
        track_window=args.track_window,
        engine_timeout_s=args.engine_timeout_s,
    )
    config.tokens()  # a missing or empty token file stops here, before Triton starts
    signal.signal(signal.SIGTERM, _interrupt)  # until the event loop takes over
    # In Triton, the estimator is found once Triton answers (`_serve`).
    in_process = config.estimator_runtime == "in-process"
    estimator = load_estimator(config.estimator_dir) if in_process else None
    triton = None
    try:
        if config.triton_url is None:  # managed: restarted when it dies
            triton = triton_supervisor(config)
            triton.start()
            url = triton.grpc_url
        else:  # external: the client reconnects when it comes back
            url = connect(config.triton_url).grpc_url
        asyncio.run(_serve(config, estimator, url, triton))
    finally:
        if triton is not None:
            triton.stop()
        if estimator is not None:
            estimator.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


async def _serve(config: Any, estimator: Any, triton_url: str, supervisor: Any = None) -> None:
    from t2i_router.router.estimator import TritonEstimator
    from t2i_router.router.metrics import RouterMetrics
    from t2i_router.router.server import RouterService, build_router
    from t2i_router.triton import TritonClient

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with TritonClient(triton_url) as client:
        if estimator is None:
            estimator = await TritonEstimator.connect(client)
        metrics = RouterMetrics()
        router = build_router(config, estimator, client, metrics)
        service = RouterService(config, router, metrics)
        try:
            port_ = await service.start()
            if supervisor is not None:
                service.follow(supervisor)
            serving = asyncio.ensure_future(service.wait_serving(config.ready_timeout_s))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                if not serving.result():
                    raise Unavailable(
                        f"not SERVING after {config.ready_timeout_s:g} s: the estimator or "
                        f"the edge engine at {triton_url} is not ready"
                    )
                print(f"serving on {config.host}:{port_}", flush=True)
                await stop.wait()
            serving.cancel()
            stopping.cancel()
            log.info("stopping: draining in-flight calls for up to %g s", config.grace_s)
        finally:
            await service.stop()


# ----- demo


def cmd_demo(args: argparse.Namespace) -> None:
    import sys

    from t2i_router.router.demo import DemoConfig, run_demo

    given = {
        "prompts": args.prompts,
        "target_rate": args.target_rate,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "baseline_prompts": args.baseline_prompts,
        "out_dir": args.out,
        "estimator_dir": args.estimator,
        "triton_repo": args.triton_repo,
        "before": args.before and tuple(args.before.split(",")),
        "after": args.after and tuple(args.after.split(",")),
    }
    config = DemoConfig(
        **{k: v for k, v in given.items() if v is not None},
        command=" ".join(["t2i-router", *sys.argv[1:]]),
    )
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds, so Triton is stopped on the way out
    summary = run_demo(config)
    keep = ("estimator", "requests", "errors", "rate", "wall_s")
    brief = {k: summary[k] for k in keep} | {"quality": summary["quality"]["all"]}
    print(json.dumps({"out": str(config.out_dir), **brief}))


# ----- clients


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, Any]:
    from t2i_router.router.security import channel_credentials
    from t2i_router_client import router_pb2_grpc

    if args.tls_ca is None and args.tls_cert is None:
        channel = grpc.insecure_channel(args.address)
    else:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        channel = grpc.secure_channel(args.address, credentials)
    return channel, router_pb2_grpc.RouterStub(channel)


def _token(args: argparse.Namespace, admin: bool) -> str | None:
    from t2i_router.router.security import read_token

    if args.token_file is not None:
        return read_token(args.token_file)
    names = ("T2I_ROUTER_ADMIN_TOKEN", "T2I_ROUTER_TOKEN") if admin else ("T2I_ROUTER_TOKEN",)
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _call(args: argparse.Namespace, rpc: str, request: Any) -> Any:
    token = _token(args, admin=rpc == "SetBudget")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    channel, stub = _stub(args)
    try:
        return getattr(stub, rpc)(request, timeout=args.timeout_s, metadata=metadata)
    except grpc.RpcError as e:
        raise RpcFailed(f"{rpc} at {args.address}: {e.code().name}: {e.details()}") from None
    finally:
        channel.close()


def _json(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def cmd_generate(args: argparse.Namespace) -> None:
    from t2i_router_client import router_pb2

    request = router_pb2.GenerateRequest(
        prompt=args.prompt, seed=args.seed, target=_TARGETS[args.target]
    )
    if args.steps is not None:
        request.steps = args.steps
    if args.guidance is not None:
        request.guidance = args.guidance
    reply = _call(args, "Generate", request)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(reply.png)
    decision = _json(reply.decision)
    decision.pop("evaluations", None)
    print(json.dumps({"output": str(out), "decision": decision}))


def cmd_route(args: argparse.Namespace) -> None:
    from t2i_router_client import router_pb2

    try:
        lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RpcFailed(f"cannot read prompts file {args.prompts_file}: {e.strerror or e}") from e
    prompts = [line.strip() for line in lines if line.strip()]
    request = router_pb2.RouteRequest(
        prompts=prompts, dry_run=args.dry_run, target=_TARGETS[args.target]
    )
    reply = _call(args, "Route", request)
    for prompt, decision in zip(prompts, reply.decisions):
        d = _json(decision)
        keep = ("index", "choice", "engine", "steps", "score", "multiplier", "counted", "fallback")
        print(json.dumps({"prompt": prompt, **{k: d.get(k) for k in keep}}))


def cmd_budget(args: argparse.Namespace) -> None:
    from t2i_router_client import router_pb2

    if args.budget_command == "get":
        print(json.dumps(_json(_call(args, "GetBudget", router_pb2.GetBudgetRequest()))))
        return
    changes = {
        "target_rate": args.rate,
        "target_cost": args.cost,
        "eta": args.eta,
        "lambda_max": args.lambda_max,
        "multiplier": args.multiplier,
    }
    given = {k: v for k, v in changes.items() if v is not None}
    if not given:
        raise RpcFailed("budget set needs at least one of --rate, --cost, --eta, ...")
    reply = _call(args, "SetBudget", router_pb2.SetBudgetRequest(**given))
    print(json.dumps(_json(reply.budget)))


# ----- parser


def add_router_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``serve``, ``demo``, ``generate``, ``route`` and ``budget`` to ``t2i-router``."""
    p = sub.add_parser("serve", help="serve the router over gRPC (starts Triton unless given)")
    p.add_argument(
        "--host", help="address to bind (default 127.0.0.1; others need TLS or --insecure)"
    )
    p.add_argument("--port", type=port, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument(
        "--insecure", action="store_true", help="allow plaintext on a non-loopback --host"
    )
    p.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM); serves TLS")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument(
        "--tls-client-ca", type=Path, help="CA (PEM) for client certificates; requires them"
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help="generation token (Generate, GenerateBatch, Route, GetBudget); "
        "default $T2I_ROUTER_TOKEN; none: no token needed",
    )
    p.add_argument(
        "--admin-token-file",
        type=Path,
        help="admin token (all rpcs, SetBudget included); default $T2I_ROUTER_ADMIN_TOKEN",
    )
    p.add_argument("--max-queue", type=positive_int, help="most prompts queued (1024)")
    p.add_argument(
        "--max-concurrent-per-client", type=positive_int, help="calls in flight per client (16)"
    )
    p.add_argument("--max-message-bytes", type=positive_int, help="largest gRPC message (4194304)")
    p.add_argument("--triton-url", help="host:port of a running Triton (default: start one)")
    p.add_argument("--triton-repo", type=Path, help="repository of the managed Triton")
    p.add_argument("--state-dir", type=Path, help="where the budget state is kept")
    p.add_argument("--budget-store", help="local (default) or redis://host:6379/0 for replicas")
    p.add_argument("--budget-key-prefix", help="Redis key prefix, one per fleet (t2i-router)")
    p.add_argument("--metrics-port", type=port, help="Prometheus port (0: a free one)")
    p.add_argument("--metrics-host", help="metrics address (127.0.0.1; 0.0.0.0 for a scraper)")
    p.add_argument("--estimator", type=Path, help="estimator folder (models/quality_estimator)")
    p.add_argument(
        "--estimator-runtime",
        choices=ESTIMATOR_RUNTIMES,
        help="in-process (default: ONNX Runtime in the router, --estimator's folder) or triton "
        "(the repository's quality_estimator model)",
    )
    p.add_argument("--target-rate", type=unit_interval, help="initial target cloud rate")
    p.add_argument(
        "--track-every",
        type=non_negative_int,
        help="counted decisions between re-solves of lambda* on recent traffic (20; 0: off)",
    )
    p.add_argument(
        "--track-window", type=positive_int, help="latest decisions a re-solve reads (200)"
    )
    p.add_argument("--engine-timeout-s", type=positive_float, help="longest engine call (60)")
    p.add_argument("--log-format", choices=("json", "text"), default="json", help="(json)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "demo", help="start Triton and the router, route a shifting stream, write docs/demo/"
    )
    p.add_argument("--estimator", type=Path, help="estimator folder (models/quality_estimator)")
    p.add_argument(
        "--prompts", type=positive_int, help="prompts sent; the mix shifts halfway (200)"
    )
    p.add_argument("--target-rate", type=unit_interval, help="target cloud rate (0.3)")
    p.add_argument("--concurrency", type=positive_int, help="Generate calls in flight (8)")
    p.add_argument("--seed", type=int, help="prompt sampler seed (0)")
    p.add_argument(
        "--baseline-prompts",
        type=non_negative_int,
        help="prompts compared with all-edge/all-cloud/random (64; 0: all)",
    )
    p.add_argument("--out", type=Path, help="output folder (docs/demo)")
    p.add_argument("--triton-repo", type=Path, help="repository of the managed Triton")
    for phase, default in (("before", "single,group,single,group,pair,relation"),
                           ("after", "pair,relation,pair,relation,single,group")):  # fmt: skip
        p.add_argument(f"--{phase}", help=f"levels {phase} the shift, round robin ({default})")
    p.set_defaults(func=cmd_demo)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text)
        q.add_argument(
            "--address",
            default=os.environ.get("T2I_ROUTER_ADDRESS", DEFAULT_ADDRESS),
            help="router host:port (default $T2I_ROUTER_ADDRESS or 127.0.0.1:50051)",
        )
        q.add_argument("--timeout-s", type=positive_float, default=60.0, help="deadline (60)")
        q.add_argument(
            "--token-file",
            type=Path,
            help="bearer token to send (default $T2I_ROUTER_TOKEN; budget set: "
            "$T2I_ROUTER_ADMIN_TOKEN first)",
        )
        q.add_argument("--tls-ca", type=Path, help="CA (PEM) to verify the router; speaks TLS")
        q.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mTLS")
        q.add_argument("--tls-key", type=Path, help="client private key (PEM) for mTLS")
        return q

    p = client("generate", "generate one image through the router")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("--target", choices=tuple(_TARGETS), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampler steps (default: the choice's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the engine's)")
    p.set_defaults(func=cmd_generate)

    p = client("route", "route prompts (one per line) without generating")
    p.add_argument("--prompts-file", required=True)
    p.add_argument("--dry-run", action="store_true", help="do not count toward the budget")
    p.add_argument("--target", choices=tuple(_TARGETS), default="auto")
    p.set_defaults(func=cmd_route)

    p = client("budget", "read or change the router's budget")
    p.add_argument("budget_command", choices=("get", "set"))
    p.add_argument("--rate", type=unit_interval, help="target cloud rate in [0, 1]")
    p.add_argument("--cost", type=non_negative_float, help="target average cost")
    p.add_argument("--eta", type=positive_float, help="step size")
    p.add_argument("--lambda-max", type=positive_float, help="upper clip of lambda")
    p.add_argument("--multiplier", type=non_negative_float, help="set lambda now")
    p.set_defaults(func=cmd_budget)
