"""The ``t2i-router`` command line.

Every failure the user can cause (a bad prompt, a missing file) ends with a one-line message and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from t2i_router.imageio import ImageFileError, load_png, save_png
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

log = logging.getLogger("t2i_router.cli")


class CliError(Exception):
    """A user-caused failure; printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _parse(text: str, where: str = "") -> object:
    try:
        return parse_prompt(text)
    except PromptError as e:
        raise CliError(f"bad prompt{where} {text!r}: {e}") from e


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
    try:
        image = load_png(args.image)
    except ImageFileError as e:
        raise CliError(str(e)) from e
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2i-router", description="Route text-to-image prompts between edge and cloud."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="the miniature world: prompts and ground-truth renders")
    wsub = world.add_subparsers(dest="world_command", required=True)

    p = wsub.add_parser("sample", help="print sampled prompts, one per line")
    p.add_argument("--n", type=_non_negative_int, default=10, help="how many (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--complexity", choices=COMPLEXITY_LEVELS, help="only this complexity")
    p.set_defaults(func=cmd_world_sample)

    p = wsub.add_parser("render", help="render prompts to ground-truth PNGs")
    p.add_argument("prompt", nargs="?", help="one prompt (with -o)")
    p.add_argument("-o", "--output", help="PNG to write for PROMPT")
    p.add_argument("--prompts-file", help="a file of prompts, one per line")
    p.add_argument("--out-dir", help="folder for 0000.png, 0001.png, ... (with --prompts-file)")
    p.add_argument("--scale", type=_positive_int, default=1, help="integer upscale (default 1)")
    p.add_argument("--seed", type=int, default=0, help="layout seed (default 0)")
    p.set_defaults(func=cmd_world_render)

    p = wsub.add_parser("demo", help="render and score sample prompts into a captioned grid")
    p.add_argument("--out", default="docs/world_grid.png", help="PNG to write")
    p.add_argument("--n", type=_positive_int, default=16, help="prompts in all (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_world_demo)

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
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except CliError as e:
        print(f"t2i-router: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("t2i-router: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
