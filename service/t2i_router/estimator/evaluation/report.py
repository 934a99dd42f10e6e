"""Writing results: JSON, markdown tables, and the PGR and cost-quality plots (matplotlib)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t2i_router.errors import InvalidRequest
from t2i_router.estimator.evaluation.bootstrap import BootstrapResult, Interval, format_interval
from t2i_router.estimator.evaluation.curves import CostQualityCurve, DeferralCurve
from t2i_router.estimator.evaluation.inputs import METRIC_LABELS, METRIC_NAMES

# ----------------------------------------------------------------------------- writers


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, NaN and inf as null."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON; numpy values become plain, NaN becomes null.

    Objects with a ``to_dict()`` (curves, `BootstrapResult`, `Interval`) are written through it.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return out


def markdown_table(result: BootstrapResult, reference: str | None = None, decimals: int = 2) -> str:
    """Methods x metrics as a Markdown table, each cell ``"0.71 [0.66, 0.75]"``.

    With ``reference``, a second table gives every other method's paired difference from it.
    """
    header = "| method | " + " | ".join(METRIC_LABELS[k] for k in METRIC_NAMES) + " |"
    rule = "|---|" + "---|" * len(METRIC_NAMES)

    def row(name: str, cells: Sequence[Interval]) -> str:
        return f"| {name} | " + " | ".join(format_interval(c, decimals) for c in cells) + " |"

    lines = [header, rule]
    lines += [row(m, [result.interval(m, k) for k in METRIC_NAMES]) for m in result.methods]
    if reference is not None:
        lines += ["", f"Paired difference from {reference}:", "", header, rule]
        lines += [
            row(m, [result.difference(m, reference, k) for k in METRIC_NAMES])
            for m in result.methods
            if m != reference
        ]
    pct = round(result.confidence * 100)
    lines += [
        "",
        f"{pct}% paired percentile bootstrap intervals over {result.n_prompts} test prompts, "
        f"B = {result.n_boot}, seed {result.seed}.",
    ]
    return "\n".join(lines) + "\n"


def write_markdown(
    path: str | Path,
    result: BootstrapResult,
    reference: str | None = None,
    title: str | None = None,
) -> Path:
    """Write `markdown_table` (under a ``# title`` if given) to ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown_table(result, reference)
    out.write_text(f"# {title}\n\n{text}" if title else text)
    return out


# ----------------------------------------------------------------------------- plots


def plot_pgr_curves(
    curves: Mapping[str, DeferralCurve],
    path: str | Path,
    bootstrap: BootstrapResult | None = None,
    title: str | None = None,
) -> Path:
    """PGR against cloud rate for several methods, the random diagonal, and bootstrap bands.

    Args:
        curves: method name -> its `deferral_curve`.
        path: PNG to write.
        bootstrap: Where it holds a method of the same name, its pointwise band is shaded.
        title: Figure title.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg for PNG

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    for name, curve in curves.items():
        (line,) = ax.plot(curve.rates, curve.pgr, label=name)
        if bootstrap is not None and name in bootstrap.estimates:
            low, high = bootstrap.pgr_band(name)
            ax.fill_between(bootstrap.rates, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("cloud rate")
    ax.set_ylabel("PGR (share of the cloud's gain recovered)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def plot_cost_quality(
    curves: Mapping[str, CostQualityCurve],
    path: str | Path,
    choice_names: Sequence[str] | None = None,
    title: str | None = None,
    cost_label: str = "mean cost",
) -> Path:
    """Mean quality against mean cost for M-choice methods, with the fixed choices as points.

    Args:
        curves: method name -> its `cost_quality_curve` (all on the same prompts and choices).
        path: PNG to write.
        choice_names: Labels of the fixed choices; default ``choice 0``, ``choice 1``, ...
        title: Figure title.
        cost_label: x-axis label, e.g. ``"GFLOPs per image"``.
    """
    from matplotlib.figure import Figure

    if not curves:
        raise InvalidRequest("curves is empty; give at least one method")
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(curve.mean_cost, curve.mean_quality, label=name)
    first = next(iter(curves.values()))
    names = list(choice_names) if choice_names else [f"choice {m}" for m in range(first.costs.size)]
    if len(names) != first.costs.size:
        raise InvalidRequest(f"choice_names has {len(names)} names for {first.costs.size} choices")
    ax.scatter(first.costs, first.fixed_quality, color="black", zorder=3, label="fixed choices")
    for name, cost, quality in zip(names, first.costs, first.fixed_quality):
        ax.annotate(name, (cost, quality), textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel(cost_label)
    ax.set_ylabel("mean quality")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out
