"""Measure the engines: quality per complexity (the routing gap) and composition controls.

``t2i-router engines report`` writes ``docs/engines_report.json``, a per-complexity table in
``docs/engines_report.md`` and a grid ``docs/engines_report.png`` (rows: ground truth, edge,
cloud). The prompts it scores are chosen in :mod:`t2i_router.engines.prompts`; model cards
(cost, learning curve) are :mod:`t2i_router.engines.card`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from t2i_router.engines.config import EngineConfig
from t2i_router.engines.engine import Engine
from t2i_router.engines.prompts import REPORT_SEED, held_out_prompts, image_seeds, training_texts
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.engines.unet import Denoiser
from t2i_router.world import (
    ALIGNMENT_ASPECTS,
    ASPECTS,
    COMPLEXITY_LEVELS,
    mean_alignment,
    render,
    score_images,
)
from t2i_router.world.spec import SceneSpec, opposite_relation, swapped_shapes

log = logging.getLogger(__name__)


def per_level(values: np.ndarray, levels: np.ndarray) -> dict[str, float]:
    """Mean of per-prompt ``values`` for each complexity level, and over all prompts."""
    out = {lv: round(float(values[levels == lv].mean()), 4) for lv in COMPLEXITY_LEVELS}
    out["all"] = round(float(values.mean()), 4)
    return out


# Composition controls: (aspect, counterfactual spec). An engine follows the composition when
# its images score higher on the aspect against the prompt than against the counterfactual;
# one that ignores it scores the same against both.
CONTROLS = {
    "relation": ("relation", opposite_relation),
    "shape_binding": ("shape", swapped_shapes),
}
CONTROL_LABELS = {"relation": "opposite relation", "shape_binding": "shapes swapped"}


def control_scores(images: np.ndarray, specs: Sequence[SceneSpec]) -> dict[str, np.ndarray]:
    """Per control, (N, 2): the aspect against the prompt and against its counterfactual (NaN
    for prompts the control does not apply to)."""
    out = {}
    for name, (aspect, counterfactual) in CONTROLS.items():
        col = ASPECTS.index(aspect)
        rows = np.full((len(specs), 2), np.nan)
        cf = [counterfactual(s) for s in specs]
        idx = [i for i, c in enumerate(cf) if c is not None]
        if idx:
            sub = images[idx]
            rows[idx, 0] = score_images(sub, [specs[i] for i in idx])[:, col]
            rows[idx, 1] = score_images(sub, [cf[i] for i in idx])[:, col]
        out[name] = rows
    return out


def score_engine(
    engine: Engine, pairs: Sequence[tuple[str, object]], seeds_per_prompt: int = 2
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Aspect scores (N, K) averaged over seeds, the first seed's images (N, 32, 32, 3), and
    the composition controls (:func:`control_scores`) averaged over seeds.

    Seeds come from :func:`image_seeds`, so two engines are compared on the same noise.
    """
    texts = [t for t, _ in pairs]
    specs = [s for _, s in pairs]
    scores, controls, first = [], [], None
    for k in range(seeds_per_prompt):
        images = engine.generate(texts, image_seeds(k, len(texts)))
        if k == 0:
            first = images
        scores.append(score_images(images, specs))
        controls.append(control_scores(images, specs))
    mean_controls = {c: np.mean([seed[c] for seed in controls], axis=0) for c in CONTROLS}
    return np.mean(scores, axis=0), first, mean_controls


def controls_summary(controls: dict[str, np.ndarray]) -> dict[str, dict]:
    """Mean of each control's two columns over the prompts it applies to."""
    out = {}
    for name, rows in controls.items():
        rows = rows[~np.isnan(rows[:, 0])]
        out[name] = {
            "n_prompts": len(rows),
            "prompted": round(float(rows[:, 0].mean()), 4) if len(rows) else None,
            "counterfactual": round(float(rows[:, 1].mean()), 4) if len(rows) else None,
        }
    return out


def control_table(report: dict) -> str:
    """Markdown table: per engine and control, the aspect against the prompt and against the
    counterfactual, and their difference (about 0: the engine ignores that part of the prompt)."""
    lines = [
        "| engine | "
        + " | ".join(f"{c}: prompt / {CONTROL_LABELS[c]} (diff)" for c in CONTROLS)
        + " |",
        "|---" * (len(CONTROLS) + 1) + "|",
    ]
    for name, r in report["engines"].items():
        cells = []
        for c in CONTROLS:
            v = r["controls"][c]
            if v["prompted"] is None:
                cells.append("-")
            else:
                diff = v["prompted"] - v["counterfactual"]
                cells.append(f"{v['prompted']:.3f} / {v['counterfactual']:.3f} ({diff:+.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aspects_by_level(scores: np.ndarray, levels: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean of each alignment aspect per complexity level (None where it does not apply)."""
    out: dict[str, dict[str, float]] = {}
    for lv in COMPLEXITY_LEVELS:
        rows = scores[levels == lv]
        out[lv] = {}
        for i, a in enumerate(ALIGNMENT_ASPECTS):
            col = rows[:, i][~np.isnan(rows[:, i])]
            out[lv][a] = round(float(col.mean()), 4) if col.size else None
    return out


def aspect_table(report: dict, engines: Sequence[str] = ("edge_small", "cloud_large")) -> str:
    """Markdown table: each alignment aspect per level as ``edge / cloud`` (where the gap is)."""
    per = [report["engines"][name]["aspects_by_level"] for name in engines]
    lines = [
        f"| aspect ({' / '.join(engines)}) | " + " | ".join(COMPLEXITY_LEVELS) + " |",
        "|---" * (len(COMPLEXITY_LEVELS) + 1) + "|",
    ]
    for a in ALIGNMENT_ASPECTS:
        cells = []
        for lv in COMPLEXITY_LEVELS:
            values = [p[lv][a] for p in per]
            cells.append("-" if None in values else " / ".join(f"{v:.3f}" for v in values))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gap_report(edge: np.ndarray, cloud: np.ndarray, levels: np.ndarray) -> dict:
    """Per-prompt routing gap between two engines' mean alignments, and issue 3's goals on it."""
    gap = cloud - edge
    out = {
        "cloud_minus_edge": per_level(gap, levels),
        "edge_at_least_as_good": per_level((edge >= cloud).astype(float), levels),
    }
    g = out["cloud_minus_edge"]
    out["goals"] = {
        "cloud_beats_edge_by_0.15": bool(g["all"] >= 0.15),
        "edge_as_good_on_20_to_60_percent": bool(0.2 <= out["edge_at_least_as_good"]["all"] <= 0.6),
        "gap_grows_with_complexity": bool(g["relation"] > g["single"] and g["pair"] > g["single"]),
    }
    return out


def quality_report(
    engines: dict[str, Engine],
    n: int = 500,
    seeds_per_prompt: int = 2,
    seed: int = REPORT_SEED,
    untrained: dict[str, Engine] | None = None,
) -> tuple[dict, list[tuple[str, object]], dict[str, np.ndarray]]:
    """Score each engine on ``n`` held-out prompts (balanced over complexity).

    Returns the report dict, the prompts, and the first seed's images per engine.
    """
    pairs = held_out_prompts(n, seed, exclude=training_texts())
    levels = np.array([s.complexity for _, s in pairs])
    report: dict = {"n_prompts": len(pairs), "seeds_per_prompt": seeds_per_prompt, "engines": {}}
    align: dict[str, np.ndarray] = {}
    first_images: dict[str, np.ndarray] = {}
    for name, engine in {
        **engines,
        **{f"{k}_untrained": v for k, v in (untrained or {}).items()},
    }.items():
        t0 = time.monotonic()
        q, first_images[name], controls = score_engine(engine, pairs, seeds_per_prompt)
        align[name] = mean_alignment(q)
        report["engines"][name] = {
            "mean_alignment": per_level(align[name], levels),
            "aspects": {a: round(float(np.nanmean(q[:, i])), 4) for i, a in enumerate(ASPECTS)},
            "aspects_by_level": aspects_by_level(q, levels),
            "controls": controls_summary(controls),
            "seconds": round(time.monotonic() - t0, 1),
        }
        log.info("%s: %s", name, report["engines"][name]["mean_alignment"])
    if "edge_small" in align and "cloud_large" in align:
        gap = gap_report(align["edge_small"], align["cloud_large"], levels)
        goals = gap.pop("goals")
        report["gap"] = gap
        report["goals"] = goals
        for name in ("edge_small", "cloud_large"):
            base = f"{name}_untrained"
            if base in align:
                report["goals"][f"{name}_beats_untrained_by_0.2"] = bool(
                    align[name].mean() - align[base].mean() >= 0.2
                )
    return report, pairs, first_images


def report_table(report: dict) -> str:
    """Markdown table: mean alignment per engine and complexity, and the gap."""
    cols = [*COMPLEXITY_LEVELS, "all"]
    lines = ["| engine | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in report["engines"].items():
        lines.append(
            f"| {name} | " + " | ".join(f"{r['mean_alignment'][c]:.3f}" for c in cols) + " |"
        )
    if "gap" in report:
        for key, label in (
            ("cloud_minus_edge", "cloud - edge"),
            ("edge_at_least_as_good", "share edge >= cloud"),
        ):
            vals = report["gap"][key]
            lines.append(f"| {label} | " + " | ".join(f"{vals[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def report_grid(
    pairs: Sequence[tuple[str, object]], images: dict[str, np.ndarray], path: Path, n: int = 8
) -> Path:
    """PNG grid: for n prompts (spread over complexity), ground truth, edge, cloud."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.linspace(0, len(pairs) - 1, n).round().astype(int)
    rows = [("ground truth", np.stack([render(pairs[i][1], 0) for i in idx]))]
    rows += [(name, images[name][idx]) for name in ("edge_small", "cloud_large") if name in images]
    fig, axes = plt.subplots(len(rows), n, figsize=(2.0 * n, 2.2 * len(rows) + 0.8))
    axes = np.asarray(axes).reshape(len(rows), n)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                words = pairs[idx[c]][0].split()
                ax.set_title(
                    "\n".join(" ".join(words[k : k + 4]) for k in range(0, len(words), 4)),
                    fontsize=6,
                )
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def onnx_engine(engine: Engine, workdir: str | Path) -> Engine:
    """The same engine with its UNet exported to ``workdir`` and run by ONNX Runtime."""
    from t2i_router.engines.export import ONNX_FILE, OnnxDenoiser, export_onnx

    path = export_onnx(engine.denoise, Path(workdir) / ONNX_FILE)
    return Engine(engine.config, OnnxDenoiser(path), engine.encoder)


def untrained_engine(config: EngineConfig, encoder: TextEncoder, seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    return Engine(config, Denoiser(config.unet).eval(), encoder)
