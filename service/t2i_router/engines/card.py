"""An engine's model card: its cost measured, its training state summarised, its learning curve.

``t2i-router engines card`` writes ``model_card.json``, ``MODEL_CARD.md`` and
``learning_curve.png`` into the engine's folder.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from t2i_router.engines.engine import CARD_FILE, Engine, load_denoiser
from t2i_router.engines.sampler import SAMPLER_LABELS
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.world import (
    COMPLEXITY_LEVELS,
    sample_prompts,
)

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


def _mix_lines(recipe: dict) -> list[str]:
    """The training mix, where the recipe shapes it (level weights, concept shares)."""
    lines = []
    if recipe.get("level_weights") is not None:
        weights = ", ".join(
            f"{lv} {w:g}" for lv, w in zip(COMPLEXITY_LEVELS, recipe["level_weights"], strict=True)
        )
        lines.append(f"- training mix: level weights {weights}")
    if recipe.get("concept_shares"):
        shares = ", ".join(f"{c} {s:g}" for c, s in recipe["concept_shares"])
        lines.append(f"- training mix: share of scenes holding {shares} (0: held out)")
    return lines


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
        *_mix_lines(tr.get("recipe", {})),
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
