"""What `router.demo` makes of its requests: the summary's numbers and its two figures.

Pure functions over `DemoRecord`s (one routed Generate call each, in completion order): no
server here, so they are tested with hand-made records. The figures use matplotlib (Agg).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "STAGES",
    "DemoRecord",
    "baseline_sample",
    "describe_estimator",
    "latency_summary",
    "plot_grid",
    "plot_rate_lambda",
    "quality_summary",
    "rate_series",
    "rate_summary",
]

#: Per-stage times the router reports on every decision, then the client's own round trip.
STAGES = ("queue_ms", "estimate_ms", "decide_ms", "generate_ms", "encode_ms", "total_ms")


@dataclass(frozen=True)
class DemoRecord:
    """One Generate call of the demo.

    Attributes:
        index: Position in the sent stream (the shift happens at ``len(stream) // 2``).
        prompt: The prompt.
        seed: Its seed.
        phase: ``"before"`` or ``"after"`` the shift.
        choice: The routed choice (``engine@steps``).
        engine: Its engine.
        cloud: Whether it ran on the cloud engine.
        counted: Whether it counted toward the budget.
        multiplier: The lambda it was decided with.
        utility_gap: Predicted utility of the cloud default minus the edge default's.
        timings_ms: The router's stage times (`STAGES`) and ``client_ms``.
        image: The returned image, (32, 32, 3) uint8.
    """

    index: int
    prompt: str
    seed: int
    phase: str
    choice: str
    engine: str
    cloud: bool
    counted: bool
    multiplier: float
    utility_gap: float
    timings_ms: dict[str, float]
    image: np.ndarray


def describe_estimator(folder: Path) -> dict[str, Any]:
    """The estimator's folder, feature kind and the hash of its weights (for the summary)."""
    config_path = folder / "config.json"
    features = None
    if config_path.is_file():
        features = json.loads(config_path.read_text()).get("features")
    digest = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return {"dir": str(folder), "features": features, "weights_sha256": digest.hexdigest()[:16]}


def baseline_sample(records: list[DemoRecord], n: int) -> list[DemoRecord]:
    """``n`` records evenly spaced in sending order (both phases alike); all when n is 0."""
    by_index = sorted(records, key=lambda r: r.index)
    if n <= 0 or n >= len(by_index):
        return by_index
    keep = np.unique(np.linspace(0, len(by_index) - 1, n).round().astype(int))
    return [by_index[k] for k in keep]


def rate_series(records: Sequence[DemoRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Running cloud rate over counted decisions and the lambda of each, in completion order."""
    counted = [r for r in records if r.counted]
    cloud = np.array([r.cloud for r in counted], dtype=np.float64)
    running = np.cumsum(cloud) / np.arange(1, len(cloud) + 1)
    return running, np.array([r.multiplier for r in counted], dtype=np.float64)


def rolling_rate(records: Sequence[DemoRecord], window: int) -> np.ndarray:
    """Cloud rate over the last ``window`` counted decisions (fewer at the start), in completion
    order: what the controller holds now, where the running rate still carries a transient."""
    cloud = np.array([r.cloud for r in records if r.counted], dtype=np.float64)
    total = np.concatenate([[0.0], np.cumsum(cloud)])
    ends = np.arange(1, len(cloud) + 1)
    starts = np.maximum(ends - max(1, window), 0)
    return (total[ends] - total[starts]) / (ends - starts)


def rate_summary(
    records: Sequence[DemoRecord], target_rate: float, warmup_decisions: int, window: int
) -> dict[str, Any]:
    """The running rate against the target (at the end, and its worst after the warm-up), the
    rate over the last ``window`` decisions at the end, and how many decisions after the shift
    lambda took to make 90% of its move to its final value."""
    running, lam = rate_series(records)
    if not len(running):
        return {"target_rate": target_rate, "counted_decisions": 0}
    error = np.abs(running - target_rate)
    after = error[warmup_decisions:] if len(error) > warmup_decisions else error[-1:]
    rolling = rolling_rate(records, window)
    return {
        "target_rate": target_rate,
        "counted_decisions": len(running),
        "final_rate": round(float(running[-1]), 4),
        "final_rate_error": round(float(error[-1]), 4),
        "warmup_decisions": warmup_decisions,
        "max_rate_error_after_warmup": round(float(after.max()), 4),
        "rolling_window": window,
        "final_rolling_rate": round(float(rolling[-1]), 4),
        "final_rolling_rate_error": round(float(abs(rolling[-1] - target_rate)), 4),
        "lambda_first": round(float(lam[0]), 5),
        "lambda_at_shift": round(float(_lambda_at_shift(records)), 5),
        "lambda_last": round(float(lam[-1]), 5),
        "lambda_90pct_after_shift_decisions": _lambda_recovery(records),
    }


def _lambda_at_shift(records: Sequence[DemoRecord]) -> float:
    after = [r.multiplier for r in records if r.phase == "after"]
    return after[0] if after else float("nan")


def _lambda_recovery(records: Sequence[DemoRecord]) -> int | None:
    """Counted decisions (sending order) from the shift until lambda first covers 90% of the
    way from its value at the shift to its last value; None without a shift or a move."""
    counted = sorted((r for r in records if r.counted), key=lambda r: r.index)
    lam, phases = [r.multiplier for r in counted], [r.phase for r in counted]
    if "after" not in phases:
        return None
    start = phases.index("after")
    move = lam[-1] - lam[start]
    if move == 0:
        return None
    return next(i for i, v in enumerate(lam[start:]) if (v - lam[start]) / move >= 0.9 - 1e-9)


def quality_summary(
    routed: np.ndarray,
    edge: np.ndarray,
    cloud: np.ndarray,
    is_cloud: np.ndarray,
    phases: Sequence[str],
) -> dict[str, Any]:
    """Mean alignment of the routed images against all-edge, all-cloud and random routing.

    Args:
        routed, edge, cloud: Per-prompt mean alignment, (N,) each, on the same prompts and seeds.
        is_cloud: Whether the router sent each prompt to the cloud engine, (N,).
        phases: ``before``/``after`` per prompt.

    Random routing at the router's own cloud share r is given as its expectation,
    ``(1 - r) * edge + r * cloud`` averaged over the prompts (no sampling noise).
    """
    r = float(np.mean(is_cloud))
    phases_arr = np.asarray(phases)

    def block(mask: np.ndarray) -> dict[str, float]:
        e, c, q = float(edge[mask].mean()), float(cloud[mask].mean()), float(routed[mask].mean())
        share = float(np.mean(is_cloud[mask]))
        rand = (1 - share) * e + share * c
        gap = c - e
        return {
            "prompts": int(mask.sum()),
            "cloud_share": round(share, 4),
            "routed": round(q, 4),
            "all_edge": round(e, 4),
            "all_cloud": round(c, 4),
            "random_same_rate": round(rand, 4),
            # share of the cloud's gain the router recovers (RouteLLM's PGR); noisy when small
            "gain_recovered": round((q - e) / gap, 4) if abs(gap) > 1e-9 else None,
        }

    out = {"metric": "mean_alignment (world.score_images vs parse_prompt)", "cloud_share": r}
    out["all"] = block(np.ones(len(routed), dtype=bool))
    for phase in ("before", "after"):
        mask = phases_arr == phase
        if mask.any():
            out[phase] = block(mask)
    return out


def latency_summary(records: Sequence[DemoRecord]) -> dict[str, Any]:
    """p50/p99 per stage (ms) over all calls, and the generate stage per engine."""

    def pct(values: Sequence[float]) -> dict[str, float]:
        v = np.asarray(values, dtype=np.float64)
        return {
            "p50": round(float(np.percentile(v, 50)), 2),
            "p99": round(float(np.percentile(v, 99)), 2),
        }

    out: dict[str, Any] = {
        stage: pct([r.timings_ms[stage] for r in records]) for stage in (*STAGES, "client_ms")
    }
    for engine in sorted({r.engine for r in records}):
        out[f"generate_ms[{engine}]"] = pct(
            [r.timings_ms["generate_ms"] for r in records if r.engine == engine]
        )
    return out


def plot_rate_lambda(
    records: Sequence[DemoRecord], target_rate: float, title: str, path: Path, window: int
) -> Path:
    """Running cloud rate, the rate over the last ``window`` decisions and lambda against the
    target over counted requests, shift marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    running, _ = rate_series(records)
    x = np.arange(1, len(running) + 1)
    # lambda and the shift in decision (sending) order: completion order interleaves slow
    # cloud calls with fast edge ones
    by_index = sorted((r for r in records if r.counted), key=lambda r: r.index)
    shift = next((i + 1 for i, r in enumerate(by_index) if r.phase == "after"), None)
    fig, ax = plt.subplots(figsize=(8, 4.6))
    ax.plot(x, running, color="tab:blue", label="running cloud rate (completion order)")
    ax.plot(
        x,
        rolling_rate(records, window),
        color="tab:blue",
        lw=0.8,
        alpha=0.5,
        label=f"cloud rate of the last {window}",
    )
    ax.axhline(target_rate, color="tab:blue", ls="--", lw=1, label=f"target {target_rate:g}")
    ax.set_xlabel("counted requests")
    ax.set_ylabel("cloud rate", color="tab:blue")
    ax.set_ylim(0, 1)
    twin = ax.twinx()
    twin.plot(
        x, [r.multiplier for r in by_index], color="tab:orange", label="lambda (decision order)"
    )
    twin.set_ylabel("lambda (multiplier)", color="tab:orange")
    if shift is not None:
        ax.axvline(shift, color="gray", ls=":", lw=1.5, label="prompt mix shifts")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(
        lines[0] + more[0],
        lines[1] + more[1],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=2,
        fontsize=8,
    )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grid(
    records: Sequence[DemoRecord], quality: np.ndarray, title: str, path: Path, cols: int = 6
) -> Path:
    """Routed images labelled with their choice, predicted gap and measured alignment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(records) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, record, q in zip(axes.flat, records, quality):
        ax.imshow(record.image, interpolation="nearest")
        words = record.prompt.split()
        text = " ".join(words[:5]) + ("\n" + " ".join(words[5:10]) if len(words) > 5 else "")
        color = "tab:red" if record.cloud else "tab:green"
        ax.set_title(
            f"{text}\n{record.choice} gap {record.utility_gap:+.3f}\n"
            f"{record.phase} shift, alignment {q:.2f}",
            fontsize=6,
            color=color,
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
