# Over 400 lines on purpose: one argparse tree of thin world and engines commands.
"""The ``t2i-router`` command line.

Every failure the user can cause (a bad prompt, a missing file) is a
`t2i_router.errors.RouterError`; :func:`t2i_router.command.run_command` ends it with a one-line
message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from t2i_router.argtypes import non_negative_float, non_negative_int, positive_int, unit_interval
from t2i_router.command import run_command
from t2i_router.errors import InvalidRequest
from t2i_router.estimator.cli import add_estimator_parser, add_label_parser
from t2i_router.imageio import load_png, save_png
from t2i_router.router.cli import add_router_parser
from t2i_router.triton.cli import add_triton_parser
from t2i_router.world import (
    ASPECTS,
    COMPLEXITY_LEVELS,
    PromptError,
    mean_alignment,
    parse_prompt,
    render,
    sample_prompts,
    score_images,
)
from t2i_router.world.vocab import OBJECT_COLORS, SHAPES, SIZES

log = logging.getLogger("t2i_router.cli")


class CliError(InvalidRequest):
    """A command line that cannot run as given: options that do not fit, an unreadable file."""


def _parse(text: str, where: str = "") -> object:
    try:
        return parse_prompt(text)
    except PromptError as e:  # the same error, saying which prompt
        raise PromptError(f"bad prompt{where} {text!r}: {e}") from e


def _read_prompts(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CliError(f"cannot read prompts file {path}: {e.strerror or e}") from e
    return [line.strip() for line in lines if line.strip()]


def cmd_world_sample(args: argparse.Namespace) -> None:
    for text, _ in sample_prompts(args.n, seed=args.seed, complexity=args.complexity):
        print(text)


def cmd_world_render(args: argparse.Namespace) -> None:
    if (args.prompt is None) == (args.prompts_file is None):
        raise CliError("give either a PROMPT with -o, or --prompts-file with --out-dir")
    if args.prompt is not None:
        if args.output is None:
            raise CliError("a PROMPT needs -o/--output OUT.png")
        spec = _parse(args.prompt)
        path = save_png(render(spec, args.seed), args.output, scale=args.scale)
        print(path)
        return
    if args.out_dir is None:
        raise CliError("--prompts-file needs --out-dir D")
    prompts = _read_prompts(args.prompts_file)
    specs = [_parse(p, f" on line {i + 1}") for i, p in enumerate(prompts)]
    out_dir = Path(args.out_dir)
    for i, spec in enumerate(specs):
        save_png(render(spec, args.seed + i), out_dir / f"{i:04d}.png", scale=args.scale)
    print(f"wrote {len(specs)} images to {out_dir}")


def cmd_score(args: argparse.Namespace) -> None:
    spec = _parse(args.prompt)
    image = load_png(args.image)
    scores = score_images(image[None], [spec])[0]
    out = {
        name: (None if math.isnan(v) else round(float(v), 4)) for name, v in zip(ASPECTS, scores)
    }
    out["mean_alignment"] = round(float(mean_alignment(scores)), 4)
    print(json.dumps(out))


def cmd_world_demo(args: argparse.Namespace) -> None:
    """Sample prompts of every complexity, render and score them, and draw a captioned grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_level = max(1, args.n // len(COMPLEXITY_LEVELS))
    prompts = [
        pair
        for i, level in enumerate(COMPLEXITY_LEVELS)
        for pair in sample_prompts(per_level, seed=args.seed + i, complexity=level)
    ]
    images = np.stack([render(spec, args.seed + i) for i, (_, spec) in enumerate(prompts)])
    scores = score_images(images, [spec for _, spec in prompts])
    cols = per_level
    fig, axes = plt.subplots(
        len(COMPLEXITY_LEVELS), cols, figsize=(2.6 * cols, 3.3 * len(COMPLEXITY_LEVELS))
    )
    axes = np.asarray(axes).reshape(len(COMPLEXITY_LEVELS), cols)
    for k, ((text, spec), image, q) in enumerate(zip(prompts, images, scores)):
        ax = axes[k // cols, k % cols]
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        wrapped = "\n".join(_wrap(text, 28))
        ax.set_title(f"{wrapped}\nalignment {mean_alignment(q):.2f}", fontsize=7)
        if k % cols == 0:
            ax.set_ylabel(spec.complexity, fontsize=9)
    fig.suptitle("t2i-router miniature world: sampled prompts, ground-truth renders, scores")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    means = np.nanmean(scores, axis=0)
    print("mean quality of ground-truth renders:")
    for name, v in zip(ASPECTS, means):
        print(f"  {name:12s} {v:.3f}")
    print(f"wrote {out}")


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line]


DEFAULT_MODELS_DIR = "models"
# engines.checkpoints.UPGRADES, named here so that parsing arguments does not import torch
UNET_FEATURES = ("position_channels", "token_positions", "text_transformer")
# engines.recipe.CONCEPTS, likewise
CONCEPTS = (*OBJECT_COLORS, *SHAPES, *SIZES)


def concept_share(text: str) -> tuple[str, float] | None:
    """``CONCEPT=SHARE`` (``purple=0.01``) as a pair, or ``none`` as None (no concept singled
    out: clears a resumed checkpoint's shares); the error quotes the bad text."""
    if text == "none":
        return None
    concept, sep, share = text.partition("=")
    if not sep or concept not in CONCEPTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not CONCEPT=SHARE with CONCEPT one of {', '.join(CONCEPTS)}"
        )
    try:
        value = float(share)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {share!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"{text!r}: the share must be in [0, 1)")
    return concept, value


def cmd_engines_train(args: argparse.Namespace) -> None:
    from t2i_router.engines import ENGINES
    from t2i_router.engines.checkpoints import checkpoint_recipe, run_engine_config
    from t2i_router.engines.recipe import STATE_FILE, TrainConfig, TrainingError
    from t2i_router.engines.training import Trainer

    out_dir = Path(args.models_dir) / args.engine
    # Flags left out are None: a fresh run takes the recipe's defaults, a resumed one keeps
    # what its checkpoint was trained with.
    given = {
        k: v
        for k, v in {
            "batch_size": args.batch_size,
            "threads": args.threads,
            "ema_decay": args.ema_decay,
            "lr_decay_from": args.lr_decay_from,
            "lr_decay_steps": args.lr_decay_steps,
            "min_lr_factor": args.min_lr_factor,
            "device": args.device,
            "data_workers": args.data_workers,
            "level_weights": args.level_weights,
            "grounding_weight": args.grounding_weight,
            "high_noise_share": args.high_noise_share,
            "high_noise_from": args.high_noise_from,
        }.items()
        if v is not None
    }
    if args.concept_share is not None:
        shares = [s for s in args.concept_share if s is not None]
        if shares and len(shares) < len(args.concept_share):
            raise CliError("--concept-share none clears the shares: give it alone")
        given["concept_shares"] = tuple(shares) or None
    config = run_engine_config(ENGINES[args.engine], out_dir, args.resume, args.unet_feature or ())
    train_cfg = checkpoint_recipe(out_dir, **given) if args.resume else TrainConfig(**given)
    if not args.resume and (out_dir / STATE_FILE).exists():
        raise TrainingError(f"{out_dir / STATE_FILE} exists: pass --resume, or remove it")
    trainer = Trainer(config, out_dir, train_cfg, cache_dir=Path(args.cache_dir))
    if args.resume:
        trainer.load_checkpoint()
    result = trainer.run(minutes=args.minutes, max_steps=args.max_steps)
    print(json.dumps({"engine": args.engine, "step": result["step"], "out_dir": str(out_dir)}))


def cmd_engines_generate(args: argparse.Namespace) -> None:
    from t2i_router.engines import Engine

    prompts = _read_prompts(args.prompts_file)
    engine = Engine.load(Path(args.models_dir) / args.engine)
    if args.sampler is not None:
        engine.config = replace(engine.config, sampler=args.sampler)
    images = engine.generate(
        prompts,
        [args.seed + i for i in range(len(prompts))],
        steps=args.steps,
        guidance=args.guidance,
    )
    out_dir = Path(args.out_dir)
    for i, image in enumerate(images):
        save_png(image, out_dir / f"{i:04d}.png", scale=args.scale)
    print(f"wrote {len(images)} images to {out_dir}")


def cmd_engines_report(args: argparse.Namespace) -> None:
    from t2i_router.engines import Engine, TextEncoder, WeightsNotFoundError
    from t2i_router.engines.report import (
        aspect_table,
        control_table,
        onnx_engine,
        quality_report,
        report_grid,
        report_table,
        untrained_engine,
    )

    encoder = TextEncoder()
    try:
        engines = {
            name: Engine.load(Path(args.models_dir) / name, encoder)
            for name in ("edge_small", "cloud_large")
        }
    except WeightsNotFoundError as e:
        e.add_note("train it first with `t2i-router engines train`")
        raise
    untrained = {name: untrained_engine(e.config, encoder) for name, e in engines.items()}
    scratch = None
    if args.runtime == "onnxruntime":  # what Triton serves; faster than torch for the cloud
        scratch = tempfile.TemporaryDirectory(prefix="t2i-report-")
        engines = {n: onnx_engine(e, Path(scratch.name) / n) for n, e in engines.items()}
        untrained = {
            n: onnx_engine(e, Path(scratch.name) / f"{n}_untrained") for n, e in untrained.items()
        }
    try:
        report, pairs, images = quality_report(engines, args.n, args.seeds, untrained=untrained)
    finally:
        if scratch is not None:
            scratch.cleanup()
    report["runtime"] = args.runtime
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engines_report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = report_table(report)
    goals = "\n".join(f"- {k}: {'yes' if v else 'NO'}" for k, v in report.get("goals", {}).items())
    aspects = (
        f"Where the gap comes from: each alignment aspect by level, edge / cloud.\n\n"
        f"{aspect_table(report)}\n"
        if "gap" in report
        else ""
    )
    aspects += (
        "Does an engine follow the composition? The relation aspect of relation prompts, and "
        "the shape aspect of two-group prompts (different colors and shapes), scored against "
        "the prompt and against the same scene with that fact reversed; a difference near 0 "
        f"means the engine ignores it.\n\n{control_table(report)}\n"
    )
    (out / "engines_report.md").write_text(
        f"# Engine quality report\n\n{report['n_prompts']} held-out prompts x "
        f"{report['seeds_per_prompt']} seeds, mean alignment, UNets run by {args.runtime}. "
        f"Regenerate: `t2i-router engines report --n {args.n} --seeds {args.seeds} "
        f"--runtime {args.runtime}`.\n\n{table}\n"
        f"Goals:\n{goals}\n\n{aspects}![grid](engines_report.png)\n"
    )
    report_grid(pairs, images, out / "engines_report.png")
    print(table, end="")
    print(goals)


def cmd_engines_card(args: argparse.Namespace) -> None:
    from t2i_router.engines.card import write_model_card

    card = write_model_card(Path(args.models_dir) / args.engine)
    print(json.dumps({"engine": card["name"], "cost": card["cost"]}))


def cmd_engines_export(args: argparse.Namespace) -> None:
    from t2i_router.engines import load_denoiser
    from t2i_router.engines.export import ONNX_FILE, export_onnx

    engine_dir = Path(args.models_dir) / args.engine
    model, _ = load_denoiser(engine_dir)
    print(export_onnx(model, engine_dir / ONNX_FILE))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2i-router", description="Route text-to-image prompts between edge and cloud."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    add_triton_parser(sub)
    add_label_parser(sub)
    add_estimator_parser(sub)
    add_router_parser(sub)

    world = sub.add_parser("world", help="the miniature world: prompts and ground-truth renders")
    wsub = world.add_subparsers(dest="world_command", required=True)

    p = wsub.add_parser("sample", help="print sampled prompts, one per line")
    p.add_argument("--n", type=non_negative_int, default=10, help="how many (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--complexity", choices=COMPLEXITY_LEVELS, help="only this complexity")
    p.set_defaults(func=cmd_world_sample)

    p = wsub.add_parser("render", help="render prompts to ground-truth PNGs")
    p.add_argument("prompt", nargs="?", help="one prompt (with -o)")
    p.add_argument("-o", "--output", help="PNG to write for PROMPT")
    p.add_argument("--prompts-file", help="a file of prompts, one per line (blank lines skipped)")
    p.add_argument("--out-dir", help="folder for 0000.png, 0001.png, ... (with --prompts-file)")
    p.add_argument("--scale", type=positive_int, default=1, help="integer upscale (default 1)")
    p.add_argument("--seed", type=int, default=0, help="layout seed (default 0)")
    p.set_defaults(func=cmd_world_render)

    p = wsub.add_parser("demo", help="render and score sample prompts into a captioned grid")
    p.add_argument("--out", default="docs/world_grid.png", help="PNG to write")
    p.add_argument("--n", type=positive_int, default=16, help="prompts in all (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_world_demo)

    engines = sub.add_parser("engines", help="the edge_small and cloud_large diffusion engines")
    esub = engines.add_subparsers(dest="engines_command", required=True)
    p = esub.add_parser("train", help="train an engine on rendered scenes (resumable)")
    p.add_argument("engine", choices=("edge_small", "cloud_large"))
    p.add_argument("--minutes", type=float, help="train this long in this call")
    p.add_argument("--max-steps", type=positive_int, help="stop at this many steps in all")
    p.add_argument("--resume", action="store_true", help="continue from train_state.pt")
    # Recipe flags default to None: "the recipe's default" on a fresh run, "the checkpoint's
    # value" with --resume (help texts name the fresh-run default).
    p.add_argument("--batch-size", type=positive_int, help="images per step (default 32)")
    p.add_argument("--threads", type=non_negative_int, help="torch threads (default: torch's)")
    p.add_argument("--ema-decay", type=unit_interval, help="weight EMA decay (default 0.995)")
    p.add_argument(
        "--lr-decay-from",
        type=non_negative_int,
        help="final phase: from this step the learning rate decays (cosine); default: never",
    )
    p.add_argument("--lr-decay-steps", type=positive_int, help="decay length (default 2000)")
    p.add_argument("--device", help="where the UNet trains: cpu (default) or cuda")
    p.add_argument(
        "--data-workers",
        type=non_negative_int,
        help="processes rendering batches ahead (default 0; a GPU needs several)",
    )
    p.add_argument(
        "--min-lr-factor",
        type=unit_interval,
        help="learning rate at the end of the decay, as a fraction of the peak (default 0.1)",
    )
    p.add_argument(
        "--level-weights",
        type=non_negative_float,
        nargs=4,
        metavar=("SINGLE", "GROUP", "PAIR", "RELATION"),
        help="relative chance of drawing a training prompt of each complexity (default 1 1 1 1)",
    )
    p.add_argument(
        "--concept-share",
        type=concept_share,
        action="append",
        metavar="CONCEPT=SHARE",
        help="share of training scenes holding a group color, shape or size, e.g. purple=0.01 "
        "(0 holds it out; repeatable; 'none' clears them on --resume; default: none)",
    )
    p.add_argument(
        "--grounding-weight",
        type=non_negative_float,
        help="weight of the grounding loss on the cross-attention maps (default 0: off)",
    )
    p.add_argument(
        "--high-noise-share",
        type=unit_interval,
        help="share of timesteps drawn from --high-noise-from up (default 0: all uniform)",
    )
    p.add_argument(
        "--high-noise-from",
        type=non_negative_int,
        help="first timestep of the high-noise draw (default 800)",
    )
    p.add_argument(
        "--unet-feature",
        action="append",
        choices=UNET_FEATURES,
        help="switch on a UNet feature (repeatable); a resumed checkpoint gains it without a "
        "change in what it computes, and keeps it on later resumes",
    )
    p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, help="default: models")
    p.add_argument("--cache-dir", default=".cache", help="prompt-encoding cache (default .cache)")
    p.set_defaults(func=cmd_engines_train)

    p = esub.add_parser("generate", help="generate one PNG per line of a prompts file")
    p.add_argument("--engine", required=True, help="edge_small or cloud_large")
    p.add_argument(
        "--prompts-file",
        required=True,
        help="a file of prompts, one per line (blank lines skipped)",
    )
    p.add_argument(
        "--out-dir", required=True, help="folder for 0000.png, 0001.png, ... one per prompt"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt; +1 per prompt")
    p.add_argument("--steps", type=int, help="sampler steps (default: the engine's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the engine's)")
    p.add_argument("--sampler", help="ddim, dpmpp_2m or unipc (default: the engine's)")
    p.add_argument("--scale", type=positive_int, default=1, help="integer upscale (default 1)")
    p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, help="default: models")
    p.set_defaults(func=cmd_engines_generate)

    p = esub.add_parser("report", help="score both engines on held-out prompts (JSON, table, grid)")
    p.add_argument("--n", type=positive_int, default=500, help="prompts (default 500)")
    p.add_argument("--seeds", type=positive_int, default=2, help="seeds per prompt (default 2)")
    p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, help="default: models")
    p.add_argument(
        "--runtime",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="what runs the UNets: torch, or ONNX Runtime as Triton serves them (default torch)",
    )
    p.add_argument("--out-dir", default="docs", help="default: docs")
    p.set_defaults(func=cmd_engines_report)

    for name, func, text in (
        ("card", cmd_engines_card, "measure cost and write the model card"),
        ("export", cmd_engines_export, "export the UNet to ONNX (model.onnx)"),
    ):
        p = esub.add_parser(name, help=text)
        p.add_argument("engine", help="edge_small or cloud_large")
        p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, help="default: models")
        p.set_defaults(func=func)

    p = sub.add_parser("score", help="print an image's quality vector against a prompt, as JSON")
    p.add_argument("--prompt", required=True, help="the prompt the image was made for")
    p.add_argument("image", help="PNG, 32x32 or an integer upscale of it")
    p.set_defaults(func=cmd_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
