"""Measure the engines: quality per complexity (the routing gap), cost, and model cards.

``t2i-router engines report`` writes ``docs/engines_report.json``, a per-complexity table in
``docs/engines_report.md`` and a grid ``docs/engines_report.png`` (rows: ground truth, edge,
cloud). ``t2i-router engines card`` measures each engine's cost and writes its model card.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from t2i_router.engines.config import EngineConfig
from t2i_router.engines.engine import CARD_FILE, Engine, load_denoiser
from t2i_router.engines.sampler import SAMPLER_LABELS
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.engines.training import TrainConfig
from t2i_router.engines.unet import Denoiser
from t2i_router.world import (
    ALIGNMENT_ASPECTS,
    ASPECTS,
    COMPLEXITY_LEVELS,
    mean_alignment,
    render,
    sample_prompts,
    score_images,
)
from t2i_router.world.spec import SceneSpec, opposite_relation, swapped_shapes

log = logging.getLogger(__name__)

REPORT_SEED = 999_000  # a sampler seed never used for training data (training: data_seed 1000)
# Prompts for choosing settings (sampling sweeps, design trials), so that no default is tuned on
# the prompts the report then measures it with.
TUNING_SEED = 998_000
REPORT_MAX_N = 2000  # tuning prompts avoid the report's prompts for any --n up to this


def training_texts(train_cfg: TrainConfig | None = None) -> set[str]:
    """The prompt texts an engine trained with ``train_cfg`` (default: the recipe) has seen."""
    cfg = train_cfg or TrainConfig()
    return {t for t, _ in sample_prompts(cfg.prompt_pool, seed=cfg.data_seed)}


def per_level(values: np.ndarray, levels: np.ndarray) -> dict[str, float]:
    """Mean of per-prompt ``values`` for each complexity level, and over all prompts."""
    out = {lv: round(float(values[levels == lv].mean()), 4) for lv in COMPLEXITY_LEVELS}
    out["all"] = round(float(values.mean()), 4)
    return out


def held_out_prompts(
    n: int, seed: int = REPORT_SEED, exclude: set[str] | frozenset[str] = frozenset()
) -> list[tuple[str, object]]:
    """``n`` prompts balanced over complexity, none of whose texts is in ``exclude``.

    The world is small: a fresh seed alone repeats about one simple prompt in ten of the
    training pool word for word, so the report excludes the training texts explicitly.
    """
    each = max(1, n // len(COMPLEXITY_LEVELS))
    pairs: list[tuple[str, object]] = []
    for i, lv in enumerate(COMPLEXITY_LEVELS):
        fresh = [
            p for p in sample_prompts(4 * each, seed=seed + i, complexity=lv) if p[0] not in exclude
        ]
        if len(fresh) < each:
            raise ValueError(f"only {len(fresh)} {lv} prompts outside the excluded texts")
        pairs += fresh[:each]
    return pairs


def tuning_prompts(
    n: int, seed: int = TUNING_SEED, train_cfg: TrainConfig | None = None
) -> list[tuple[str, object]]:
    """``n`` prompts for tuning: neither training prompts nor any the report scores.

    The report's prompts for a smaller ``n`` are a prefix of those for a larger one (the sampler
    draws in sequence), so excluding the report's prompts at ``REPORT_MAX_N`` excludes them all.
    """
    if seed == REPORT_SEED:
        raise ValueError(f"seed is {seed}, the report's own; tuning needs prompts it never scores")
    seen = training_texts(train_cfg)
    report = {t for t, _ in held_out_prompts(REPORT_MAX_N, exclude=seen)}
    return held_out_prompts(n, seed, exclude=seen | report)


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


def image_seeds(k: int, n: int) -> list[int]:
    """The seeds of the ``k``-th image of ``n`` prompts: ``k * 1_000_003 + i`` for prompt ``i``,
    the same for every engine, so engines and settings are compared on the same noise."""
    return [k * 1_000_003 + i for i in range(n)]


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


CURVE_FILE = "learning_curve.png"


def learning_curve_plot(
    curve: Sequence[dict], recipe_changes: Sequence[dict], path: Path, title: str
) -> Path:
    """PNG: mean alignment per complexity level (and over all) against training step.

    Dashed vertical lines mark the steps where the recipe changed on resume (a final phase,
    a restarted decay), dotted ones where the sampling an entry was measured with differs from
    the entry before (a new default), so that a jump in the curve can be read against its cause.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in curve]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for level in (*COMPLEXITY_LEVELS, "all"):
        ax.plot(
            steps,
            [e["mean_alignment"][level] for e in curve],
            marker="o",
            markersize=3,
            linewidth=2.4 if level == "all" else 1.2,
            color="black" if level == "all" else None,
            label=level,
        )
    for i, change in enumerate(recipe_changes):
        ax.axvline(
            change["step"],
            color="gray",
            linestyle="--",
            linewidth=0.8,
            label="recipe changed" if i == 0 else None,
        )
    changed = [
        (a["step"] + b["step"]) / 2
        for a, b in itertools.pairwise(curve)
        if a.get("sampling") != b.get("sampling")
    ]
    for i, step in enumerate(changed):
        ax.axvline(
            step,
            color="tab:blue",
            linestyle=":",
            linewidth=1.0,
            label="sampling changed" if i == 0 else None,
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("mean alignment (held-out eval prompts)")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncols=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def measure_cost(engine: Engine, repeats: int = 3) -> dict:
    """FLOPs per image at the default steps (guided: two UNet passes per step) and latency."""
    from torch.utils.flop_counter import FlopCounterMode

    model = engine.denoise
    cfg = engine.config
    x = torch.randn(1, 3, 32, 32)
    t = torch.full((1,), 500, dtype=torch.int64)
    tokens = torch.randn(1, 24, 384)
    mask = torch.ones(1, 24)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, tokens, mask)
    unet_flops = counter.get_total_flops()
    passes = 1 if cfg.default_guidance == 1.0 else 2
    out = {
        "default_steps": cfg.default_steps,
        "unet_flops_per_pass": int(unet_flops),
        # guidance runs the UNet twice per step, once at exactly 1 (sampler.diffusion_sample)
        "unet_passes_per_step": passes,
        "flops_per_image": int(unet_flops * passes * cfg.default_steps),
        "latency_s_per_image": {},
    }
    prompts = [t for t, _ in sample_prompts(32, seed=5)]
    for batch in (1, 32):
        engine.generate(prompts[:batch], list(range(batch)))  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine.generate(prompts[:batch], list(range(batch)))
            best = min(best, time.perf_counter() - t0)
        out["latency_s_per_image"][f"batch_{batch}"] = round(best / batch, 4)
    out["threads"] = torch.get_num_threads()
    return out


def write_model_card(engine_dir: Path, encoder: TextEncoder | None = None) -> dict:
    """Measure cost and write ``model_card.json`` + ``MODEL_CARD.md`` from the training state."""
    model, config = load_denoiser(engine_dir)
    engine = Engine(config, model, encoder)
    state_path = engine_dir / "train_state.pt"
    train = {}
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location="cpu")
        train = {
            "steps": state["step"],
            "train_minutes": round(state["train_seconds"] / 60.0, 1),
            "data_seed": state["train"]["data_seed"],
            "batch_size": state["train"]["batch_size"],
            "final_loss_ema": state["loss_ema"],
            "learning_curve": state["curve"],
            "recipe": state["train"],
            "recipe_changes": state.get("recipe_changes", []),
        }
    card = {
        "name": config.name,
        "config": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": train,
        "cost": measure_cost(engine),
    }
    if train.get("learning_curve"):
        learning_curve_plot(
            train["learning_curve"],
            train["recipe_changes"],
            engine_dir / CURVE_FILE,
            f"{config.name}: learning curve ({train['steps']:,} steps)",
        )
    (engine_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    (engine_dir / "MODEL_CARD.md").write_text(_card_markdown(card))
    return card


def _sampling_note(config: dict) -> str:
    if config["default_guidance"] == 1.0:
        return " (the conditional prediction alone: one UNet pass per step)"
    if config.get("guidance_rescale"):
        return f", guidance rescale {config['guidance_rescale']}"
    return ""


def _card_markdown(card: dict) -> str:
    tr = card["training"]
    cost = card["cost"]
    lines = [
        f"# {card['name']}",
        "",
        f"Pixel-space text-to-image diffusion UNet (32x32 RGB), {card['parameters']:,} parameters, "
        f"conditioning `{card['config']['unet']['conditioning']}`, channels "
        f"{card['config']['unet']['block_out_channels']}"
        f"{', x/y position channels' if card['config']['unet'].get('position_channels') else ''}"
        f"{', token positions' if card['config']['unet'].get('token_positions') else ''}"
        ". Trained here on rendered scenes of the "
        "miniature world with `t2i-router engines train`.",
        "",
        f"- steps trained: {tr.get('steps', 0)} (batch {tr.get('batch_size', '-')}), "
        f"{tr.get('train_minutes', 0)} training minutes, data seed {tr.get('data_seed', '-')}",
        f"- final loss (EMA): {tr.get('final_loss_ema')}",
        *(
            f"- from step {c['step']}: "
            + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in c["changes"].items())
            for c in tr.get("recipe_changes", [])
        ),
        f"- default sampling: {SAMPLER_LABELS[card['config'].get('sampler', 'ddim')]} "
        f"{card['config']['default_steps']} steps, guidance "
        f"{card['config']['default_guidance']}{_sampling_note(card['config'])}",
        f"- cost: {cost['flops_per_image'] / 1e9:.2f} GFLOPs per image; latency per image "
        f"{cost['latency_s_per_image']['batch_1']} s at batch 1, "
        f"{cost['latency_s_per_image']['batch_32']} s at batch 32 ({cost['threads']} threads)",
        "",
        "## Learning curve (mean alignment on fixed held-out prompts)",
        "",
        *([f"![learning curve]({CURVE_FILE})", ""] if tr.get("learning_curve") else []),
        "| step | minutes | loss | steps / guidance | "
        + " | ".join(COMPLEXITY_LEVELS)
        + " | all |",
        "|---" * (5 + len(COMPLEXITY_LEVELS)) + "|",
    ]
    unrecorded = False
    for e in tr.get("learning_curve", []):
        q = e["mean_alignment"]
        sampling = e.get("sampling")
        unrecorded |= sampling is None
        how = "*" if sampling is None else f"{sampling['steps']} / {sampling['guidance']}"
        if sampling is not None and sampling.get("sampler", "ddim") != "ddim":
            how += f", {SAMPLER_LABELS[sampling['sampler']]}"
        lines.append(
            f"| {e['step']} | {e['train_minutes']} | {e['loss_ema']} | {how} | "
            + " | ".join(f"{q[lv]:.3f}" for lv in COMPLEXITY_LEVELS)
            + f" | {q['all']:.3f} |"
        )
    if unrecorded:
        lines += [
            "",
            "\\* measured with the engine's default sampling of the time, which the entry did not"
            " record (it may differ from today's default above).",
        ]
    lines += ["", "Regenerate: `t2i-router engines card " + card["name"] + "`.", ""]
    return "\n".join(lines)


def onnx_engine(engine: Engine, workdir: str | Path) -> Engine:
    """The same engine with its UNet exported to ``workdir`` and run by ONNX Runtime."""
    from t2i_router.engines.export import OnnxDenoiser, export_onnx

    path = export_onnx(engine.denoise, Path(workdir) / "model.onnx")
    return Engine(engine.config, OnnxDenoiser(path), engine.encoder)


def untrained_engine(config: EngineConfig, encoder: TextEncoder, seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    return Engine(config, Denoiser(config.unet).eval(), encoder)
