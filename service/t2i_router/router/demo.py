# Over 400 lines on purpose: the demo (stack, calibration, stream, baselines) reads as one story.
"""The product at work: route a shifting stream of prompts at a target cloud rate, end to end.

    .venv/bin/t2i-router demo                                  # models/quality_estimator
    .venv/bin/t2i-router demo --estimator DIR --prompts 200 --out docs/demo

It starts the whole stack in this process tree: a managed tritonserver serving the engines of
``triton_repo/``, the router (grpc.aio, a free loopback port) with the estimator of
``--estimator`` in-process (a missing folder stops it with a one-line error), then:

1. sets the target cloud rate (SetBudget; 0.3 by default) with lambda and eta calibrated on
   ``calibration_prompts`` prompts of the mix the stream starts with (as an operator calibrates
   on recent traffic; `Router.sample_window`, `Router.calibrate`): lambda* where the policy's
   cloud share is the target, and eta so that lambda recovers from a shift with a time constant of
   ``prompts / 8`` decisions (the rule of `budget.eta_for_recovery`, at the measured slope of
   the share around lambda*); the router tracks lambda* on its last 2 tau decisions every
   tau / 5 (`budget`, "Tracking"), starting from the calibration sample;
2. sends ``--prompts`` sampled prompts through Generate, ``--concurrency`` in flight, whose mix
   shifts halfway (``--before``/``--after``: by default a third pair/relation prompts first,
   two thirds after)
   (`world.sample_prompts(complexity=...)`), each with its own seed;
3. generates the baselines for the same prompts and seeds straight from Triton (on
   ``--baseline-prompts`` of them, evenly spaced, 64 by default; 0: all): all-edge (the edge
   default) and all-cloud (the cloud default). A prompt the router already sent to that
   choice reuses the router's image (the engines are batch invariant, docs/engines.md);
4. scores every image with the world's exact metrics (`score_images` against `parse_prompt`)
   and writes to ``--out``: ``rate_lambda.png`` (running cloud rate and lambda against the
   target, the shift marked), ``grid.png`` (routed images labelled with their choice and
   predicted gap) and ``summary.json`` (rate error at the end and its worst after the warm-up,
   mean quality against all-edge, all-cloud and random routing at the same rate, latency p50/p99
   per stage, the estimator used, wall times, the command).

Everything stops when it returns or fails: the router, then Triton (SIGTERM to its process
group, SIGKILL after a grace period; the kernel kills it too if this process dies), so no
process is left behind. With an untrained estimator the decisions mean nothing; the summary
names the estimator folder and its weights' hash either way.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2i_router.errors import InvalidRequest, Unavailable
from t2i_router.router.demo_report import (
    DemoRecord,
    baseline_sample,
    describe_estimator,
    latency_summary,
    plot_grid,
    plot_rate_lambda,
    quality_summary,
    rate_summary,
)
from t2i_router.router.estimator import DEFAULT_ESTIMATOR_DIR
from t2i_router.world import (
    COMPLEXITY_LEVELS,
    mean_alignment,
    parse_prompt,
    sample_prompts,
    score_images,
)

__all__ = ["DemoConfig", "calibration_prompts", "demo_prompts", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs (``t2i-router demo`` flags).

    Attributes:
        prompts: Prompts sent through Generate; the mix shifts after half of them.
        target_rate: Target cloud rate (SetBudget).
        concurrency: Generate calls in flight.
        seed: Seeds the prompt sampler; prompt i is generated with seed ``seed + i``.
        before: Complexity levels sampled before the shift (round robin).
        after: Complexity levels sampled after it.
        recovery_decisions: Wanted recovery time constant tau of lambda, in decisions; None is
            ``prompts / 8``.
        max_eta: Largest step size (a flat share curve must not make lambda jump).
        calibration_prompts: Prompts of the ``before`` mix (not the stream's) that lambda and
            eta are calibrated on.
        warmup_fraction: Share of the counted decisions left out of the worst rate error.
        grid_images: Routed images in ``grid.png``.
        baseline_prompts: Prompts (evenly spaced in the stream) on which routing is compared with
            all-edge, all-cloud and random; 0 means all. The cloud baseline is the demo's most
            expensive part, so the default keeps the run to a few minutes on 2 cores.
        baseline_batch: Prompts per direct Triton call for the baselines.
        request_timeout_s: Deadline of one Generate call.
        out_dir: Where the three files go.
        estimator_dir: The estimator folder.
        triton_repo: The managed Triton's model repository.
        models_dir: Engine folders (model cards: choice costs).
        triton_startup_timeout_s: How long Triton may take to load the engines.
        command: The command line, recorded in the summary.
    """

    prompts: int = 200
    target_rate: float = 0.3
    concurrency: int = 8
    seed: int = 0
    # a third of the traffic compositional, then two thirds: lambda* moves 0.1-0.2 (a pure
    # single/group -> pair/relation shift moves it 25x and the dual steps take ~200 decisions)
    before: tuple[str, ...] = ("single", "group", "single", "group", "pair", "relation")
    after: tuple[str, ...] = ("pair", "relation", "pair", "relation", "single", "group")
    recovery_decisions: float | None = None
    max_eta: float = 0.05
    calibration_prompts: int = 256
    warmup_fraction: float = 0.25
    grid_images: int = 24
    baseline_prompts: int = 64
    baseline_batch: int = 16
    request_timeout_s: float = 600.0
    out_dir: Path = Path("docs/demo")
    estimator_dir: Path = DEFAULT_ESTIMATOR_DIR
    triton_repo: Path = Path("triton_repo")
    models_dir: Path = Path("models")
    triton_startup_timeout_s: float = 400.0
    command: str = field(default="t2i-router demo", compare=False)

    def __post_init__(self) -> None:
        if self.prompts < 2:
            raise InvalidRequest(f"prompts is {self.prompts}, need at least 2 (one per phase)")
        if not 0 < self.target_rate < 1:
            raise InvalidRequest(f"target_rate is {self.target_rate}, must be in (0, 1)")
        if self.concurrency < 1 or self.baseline_batch < 1:
            raise InvalidRequest(
                f"concurrency {self.concurrency} and baseline_batch {self.baseline_batch} "
                "must be >= 1"
            )
        for name, levels in (("before", self.before), ("after", self.after)):
            if not levels or set(levels) - set(COMPLEXITY_LEVELS):
                raise InvalidRequest(
                    f"{name} is {list(levels)}: levels must be some of {list(COMPLEXITY_LEVELS)}"
                )
        if self.calibration_prompts < 1:
            raise InvalidRequest(f"calibration_prompts is {self.calibration_prompts}, must be >= 1")
        if not 0 <= self.warmup_fraction < 1:
            raise InvalidRequest(f"warmup_fraction is {self.warmup_fraction}, must be in [0, 1)")

    @property
    def tau_decisions(self) -> float:
        return self.recovery_decisions or max(4.0, self.prompts / 8)

    @property
    def track_every(self) -> int:
        """Counted decisions between two re-solves of lambda* (tracking): tau / 5."""
        return max(1, round(self.tau_decisions / 5))

    @property
    def rolling_window(self) -> int:
        """Decisions of the rolling cloud rate: two recovery time constants."""
        return max(1, round(2 * self.tau_decisions))


def _round_robin(levels: Sequence[str], n: int, first_seed: int) -> list[str]:
    """``n`` sampled prompts cycling through ``levels``; level k's are drawn with seed
    ``first_seed + k``."""
    per_level = [
        sample_prompts(-(-n // len(levels)), seed=first_seed + k, complexity=c)
        for k, c in enumerate(levels)
    ]
    return [per_level[i % len(levels)][i // len(levels)][0] for i in range(n)]


def demo_prompts(config: DemoConfig) -> list[tuple[str, str]]:
    """(prompt, phase) pairs: ``before`` levels for the first half, ``after`` levels after."""
    half = config.prompts // 2
    out: list[tuple[str, str]] = []
    for p, (phase, levels, n) in enumerate(
        (("before", config.before, half), ("after", config.after, config.prompts - half))
    ):
        out.extend((text, phase) for text in _round_robin(levels, n, config.seed * 100 + 10 * p))
    return out


def mix_label(levels: Sequence[str]) -> str:
    """``single:group:pair:relation 2:2:1:1`` for a round-robin list of levels."""
    counts = ":".join(str(levels.count(c)) for c in COMPLEXITY_LEVELS)
    return f"{':'.join(COMPLEXITY_LEVELS)} {counts}"


def calibration_prompts(config: DemoConfig) -> list[str]:
    """``calibration_prompts`` prompts of the ``before`` levels, drawn with seeds the stream's
    prompts (`demo_prompts`) do not use."""
    return _round_robin(config.before, config.calibration_prompts, config.seed * 100 + 50)


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Runs the demo (module docstring); returns the summary also written to summary.json.

    Raises:
        EstimatorNotFoundError: ``config.estimator_dir`` holds no estimator.
        TritonStartError: Triton did not come up.
    """
    from t2i_router.router.estimator import load_estimator
    from t2i_router.triton import ManagedTritonServer, TritonServerConfig

    start_s = time.perf_counter()
    estimator = load_estimator(config.estimator_dir)
    walls: dict[str, float] = {}
    try:
        triton_config = TritonServerConfig(
            model_repository=config.triton_repo,
            startup_timeout_s=config.triton_startup_timeout_s,
        )
        with ManagedTritonServer(triton_config) as triton:
            walls["triton_start_s"] = time.perf_counter() - start_s
            log.info("Triton ready at %s after %.1f s", triton.grpc_url, walls["triton_start_s"])
            records, errors, edge, cloud, budget = asyncio.run(
                _run_stack(config, estimator, triton.grpc_url, walls)
            )
    finally:
        estimator.close()
    walls["total_s"] = time.perf_counter() - start_s  # the report adds a few seconds
    return _report(config, records, errors, edge, cloud, budget, walls)


async def _run_stack(
    config: DemoConfig, estimator: Any, triton_url: str, walls: dict[str, float]
) -> tuple[list[DemoRecord], list[str], np.ndarray, np.ndarray, dict[str, Any]]:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from t2i_router.router.server import RouterConfig, RouterService, build_router
    from t2i_router.triton import TritonClient
    from t2i_router_client import router_pb2, router_pb2_grpc

    # lambda starts from the calibration, not the server's warm start on a generic sample;
    # tracking re-solves lambda* on the last 2 tau decisions every tau / 5
    router_config = RouterConfig(
        port=0,
        target_rate=config.target_rate,
        models_dir=config.models_dir,
        warm_start_prompts=0,
        track_every=config.track_every,
        track_window=config.rolling_window,
    )
    async with TritonClient(triton_url) as client:
        router = build_router(router_config, estimator, client)
        service = RouterService(router_config, router)
        try:
            port = await service.start()
            if not await service.wait_serving(60):
                raise Unavailable("the router did not become SERVING within 60 s")
            window = await router.sample_window(calibration_prompts(config))
            router.window.add(window.rows())  # tracking reads them until the stream's replace them
            calibration = router.calibrate(
                config.target_rate, config.tau_decisions, config.max_eta, window
            )
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                await stub.SetBudget(
                    router_pb2.SetBudgetRequest(
                        target_rate=config.target_rate,
                        eta=calibration.eta,
                        multiplier=calibration.multiplier,
                    )
                )
                t0 = time.perf_counter()
                records, errors = await _stream(config, stub, router_pb2)
                walls["stream_s"] = time.perf_counter() - t0
                budget = MessageToDict(
                    await stub.GetBudget(router_pb2.GetBudgetRequest()),
                    preserving_proto_field_name=True,
                )
            budget["calibration"] = {
                **asdict(calibration),
                "tau_decisions": config.tau_decisions,
                "track_every": config.track_every,
                "track_window": config.rolling_window,
                "sample_prompts": len(window),
                "sample_levels": list(config.before),
            }
        finally:
            await service.stop()
        t0 = time.perf_counter()
        sample = baseline_sample(records, config.baseline_prompts)
        edge = await _baseline(config, client, sample, router.edge_default)
        cloud = await _baseline(config, client, sample, router.cloud_default)
        walls["baselines_s"] = time.perf_counter() - t0
    return records, errors, edge, cloud, budget


async def _stream(config: DemoConfig, stub: Any, pb: Any) -> tuple[list[DemoRecord], list[str]]:
    """Sends every prompt through Generate, ``concurrency`` at a time; completion order."""
    import grpc
    from PIL import Image

    prompts = demo_prompts(config)
    records: list[DemoRecord] = []
    next_index = 0
    errors: list[str] = []

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(prompts):
            i = next_index
            next_index += 1
            prompt, phase = prompts[i]
            seed = config.seed + i
            t0 = time.perf_counter()
            try:
                reply = await stub.Generate(
                    pb.GenerateRequest(prompt=prompt, seed=seed), timeout=config.request_timeout_s
                )
            except grpc.aio.AioRpcError as e:  # reported in the summary, the stream goes on
                log.warning("demo: Generate %d failed: %s %s", i, e.code().name, e.details())
                errors.append(f"{i}: {e.code().name}: {e.details()}")
                continue
            client_ms = (time.perf_counter() - t0) * 1e3
            d = reply.decision
            timings = {s: float(getattr(d.timings, s)) for s in _STAGE_FIELDS}
            image = np.asarray(Image.open(io.BytesIO(reply.png)).convert("RGB"))
            records.append(
                DemoRecord(
                    index=i,
                    prompt=prompt,
                    seed=seed,
                    phase=phase,
                    choice=d.choice,
                    engine=d.engine,
                    cloud=d.engine == _CLOUD_ENGINE,
                    counted=d.counted,
                    multiplier=d.multiplier,
                    utility_gap=d.utility_gap,
                    timings_ms={**timings, "client_ms": client_ms},
                    image=image,
                )
            )
            if len(records) % 25 == 0:
                log.info("demo: %d/%d prompts routed", len(records), len(prompts))

    await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    if errors and not records:
        raise Unavailable(f"every Generate call failed, the first with {errors[0]}")
    return records, errors


_STAGE_FIELDS = ("queue_ms", "estimate_ms", "decide_ms", "generate_ms", "encode_ms", "total_ms")
_CLOUD_ENGINE = "cloud_large"


async def _baseline(
    config: DemoConfig, client: Any, records: list[DemoRecord], choice: Any
) -> np.ndarray:
    """Images of ``choice`` for every record's prompt and seed, in the records' order."""
    by_index = records
    images: list[np.ndarray | None] = [
        r.image if r.choice == choice.name else None for r in by_index
    ]
    missing = [k for k, image in enumerate(images) if image is None]
    log.info(
        "demo: baseline %s: %d images from Triton, %d reused",
        choice.name,
        len(missing),
        len(images) - len(missing),
    )
    for start in range(0, len(missing), config.baseline_batch):
        rows = missing[start : start + config.baseline_batch]
        made = await client.generate(
            choice.engine,
            [by_index[k].prompt for k in rows],
            [by_index[k].seed for k in rows],
            steps=choice.steps,
            timeout_s=config.request_timeout_s,
        )
        for k, image in zip(rows, made):
            images[k] = image
    return np.stack(images)  # (N, 32, 32, 3)


def _alignment(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    return mean_alignment(score_images(images, [parse_prompt(p) for p in prompts]))


def _report(
    config: DemoConfig,
    records: list[DemoRecord],
    errors: list[str],
    edge: np.ndarray,
    cloud: np.ndarray,
    budget: dict[str, Any],
    walls: dict[str, float],
) -> dict[str, Any]:
    by_index = sorted(records, key=lambda r: r.index)
    routed_q = _alignment(np.stack([r.image for r in by_index]), [r.prompt for r in by_index])
    sample = baseline_sample(records, config.baseline_prompts)
    prompts = [r.prompt for r in sample]
    quality = quality_summary(
        _alignment(np.stack([r.image for r in sample]), prompts),
        _alignment(edge, prompts),
        _alignment(cloud, prompts),
        np.array([r.cloud for r in sample]),
        [r.phase for r in sample],
    )
    quality["routed_all_prompts"] = round(float(routed_q.mean()), 4)
    counted = sum(r.counted for r in records)
    choices = {r.choice for r in records}
    estimator = describe_estimator(config.estimator_dir)
    label = f"estimator {estimator['dir']} ({estimator['weights_sha256'][:8]})"
    out = Path(config.out_dir)
    plot_rate_lambda(
        records,
        config.target_rate,
        f"t2i-router demo: {len(records)} prompts, {mix_label(config.before)} -> "
        f"{mix_label(config.after).split()[1]} halfway; estimator "
        f"{estimator['weights_sha256'][:8]}",
        out / "rate_lambda.png",
        config.rolling_window,
    )
    step = max(1, len(by_index) // config.grid_images)
    shown = by_index[::step][: config.grid_images]
    plot_grid(
        shown,
        routed_q[::step][: config.grid_images],
        f"routed images (red: cloud, green: edge); gap = predicted utility cloud - edge; {label}",
        out / "grid.png",
    )
    summary = {
        "command": config.command,
        "estimator": estimator,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "requests": len(records),
        "errors": len(errors),
        "first_errors": errors[:5],
        "rate": rate_summary(
            records,
            config.target_rate,
            int(counted * config.warmup_fraction),
            config.rolling_window,
        ),
        "quality": quality,
        "latency_ms": latency_summary(records),
        "budget_at_end": budget,
        "choices": {c: sum(r.choice == c for r in records) for c in sorted(choices)},
        "wall_s": {k: round(v, 1) for k, v in walls.items()},
        "files": ["rate_lambda.png", "grid.png", "summary.json"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
