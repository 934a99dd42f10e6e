"""The `t2i-router label` command (and, as they land, `t2i-router estimator ...`)."""

from __future__ import annotations

import argparse
import json
import sys

from t2i_router.estimator.choices import DEFAULT_CHOICES, parse_choices

DEFAULT_LABELS_DIR = "data/labels"


def cmd_label(args: argparse.Namespace) -> None:
    from t2i_router.estimator.labels import label_split

    manifest = label_split(
        args.out,
        args.split,
        prompts=args.prompts,
        seeds=args.seeds,
        choices=parse_choices(args.choices),
        resume=args.resume,
        chunk=args.chunk,
        models_dir=args.models_dir,
        runtime=args.runtime,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    json.dump(manifest.to_dict(), sys.stdout)
    sys.stdout.write("\n")


def add_label_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``label`` to the top-level subcommands."""
    p = sub.add_parser(
        "label",
        help="generate and score every choice's images for a split's prompts (resumable)",
        description="Label a split: each choice's images for the split's first --prompts "
        "prompts x --seeds seeds, scored by the world's metrics, stored as Parquet parts under "
        "OUT/SPLIT/. A killed run continues with --resume; --resume with a larger --prompts or "
        "more --choices extends the split.",
    )
    p.add_argument("--split", required=True, choices=("train", "val", "test"))
    p.add_argument("--prompts", type=int, required=True, help="prompts of the split to label")
    p.add_argument("--seeds", type=int, required=True, help="images per prompt and choice")
    p.add_argument("--out", default=DEFAULT_LABELS_DIR, help=f"default: {DEFAULT_LABELS_DIR}")
    p.add_argument(
        "--choices",
        default=",".join(c.name for c in DEFAULT_CHOICES),
        help="ENGINE@STEPS,... (default: %(default)s)",
    )
    p.add_argument("--resume", action="store_true", help="continue or extend an existing split")
    p.add_argument("--chunk", type=int, default=100, help="prompts per part file (default 100)")
    p.add_argument("--models-dir", default="models", help="default: models")
    p.add_argument("--runtime", choices=("onnxruntime", "torch"), default="onnxruntime")
    p.add_argument("--batch-size", type=int, default=64, help="images per engine call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_label)


def add_estimator_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``estimator evaluate`` to the top-level subcommands."""
    est = sub.add_parser("estimator", help="the per-prompt quality estimator and its baselines")
    esub = est.add_subparsers(dest="estimator_command", required=True)

    from t2i_router.estimator.evaluate import add_evaluate_parser

    add_evaluate_parser(esub)
