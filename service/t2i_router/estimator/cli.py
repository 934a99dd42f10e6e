"""The `t2i-router label` and `t2i-router estimator train|predict` commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from t2i_router.argtypes import positive_int
from t2i_router.estimator import DEFAULT_MODEL_DIR
from t2i_router.estimator.choices import DEFAULT_CHOICES, parse_choices

DEFAULT_LABELS_DIR = "data/labels"


def cmd_label(args: argparse.Namespace) -> None:
    from t2i_router.estimator.labeling import label_split

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


def _read_prompt_lines(path: str) -> list[str]:
    from t2i_router.errors import InvalidRequest

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InvalidRequest(f"cannot read prompts file {path}: {e.strerror or e}") from e
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InvalidRequest(f"prompts file {path} holds no prompts (one per line)")
    return prompts


def _load_split(labels_dir: str, split: str, choices: tuple[str, ...], limit: int | None):
    from t2i_router.estimator.labels import load_labels

    labels = load_labels(labels_dir, split, choices)
    if limit is not None and limit < len(labels.prompts):
        keep = slice(0, limit)
        labels = dataclasses.replace(
            labels,
            prompts=labels.prompts[keep],
            specs=labels.specs[keep],
            levels=labels.levels[keep],
            seeds=labels.seeds[keep],
            quality=labels.quality[keep],
        )
    return labels


def cmd_estimator_train(args: argparse.Namespace) -> None:
    from t2i_router.estimator.features import TokenFeatures
    from t2i_router.estimator.moe import EstimatorConfig
    from t2i_router.estimator.training import TrainConfig, save_estimator, train_estimator

    config = EstimatorConfig(
        choices=tuple(c.name for c in parse_choices(args.choices)),
        edge_choice=args.edge_choice,
        cloud_choice=args.cloud_choice,
        features=args.features,
        top_k=args.top_k,
        rank=args.rank,
        hidden=args.hidden,
        dropout=args.dropout,
        token_selection=not args.no_token_selection,
        dual_gate=not args.no_dual_gate,
        prs_loss_weight=args.prs_loss_weight,
    )
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
    )
    train = _load_split(args.labels, args.train_split, config.choices, args.max_prompts)
    val = None
    if args.val_split != "none":
        val = _load_split(args.labels, args.val_split, config.choices, args.max_prompts)
    features = TokenFeatures(config.features, max_tokens=config.max_tokens)
    torch_threads = args.threads
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    result = train_estimator(
        config, train, val, train_config, features=features, progress=not args.no_progress
    )
    card = save_estimator(
        result,
        args.out,
        data_version=train.data_version,
        train_config=train_config,
        features=features,
        extra={
            "splits": {
                "train": [args.train_split, len(train.prompts)],
                "val": [args.val_split, 0 if val is None else len(val.prompts)],
            }
        },
    )
    summary = {k: card[k] for k in ("parameters", "flops_per_prompt", "val", "train_time_s")}
    print(json.dumps({"model": str(args.out), **summary}))


def cmd_estimator_predict(args: argparse.Namespace) -> None:
    from t2i_router.estimator.quality import QualityEstimator

    prompts = _read_prompt_lines(args.prompts_file)
    estimator = QualityEstimator.load(args.model)
    q = estimator.predict(prompts)  # (N, M, K)
    q64 = q.astype(np.float64)  # rounds to short decimals in JSON
    utilities = estimator.utilities_from_q(q)  # (N, M)
    scores = estimator.score_from_utilities(utilities)  # (N,)
    for i, prompt in enumerate(prompts):
        row = {
            "prompt": prompt,
            "q": {
                choice: dict(zip(estimator.metrics, np.round(q64[i, m], 5).tolist()))
                for m, choice in enumerate(estimator.choices)
            },
            "utility": {c: round(float(u), 5) for c, u in zip(estimator.choices, utilities[i])},
            "score": round(float(scores[i]), 5),
        }
        sys.stdout.write(json.dumps(row) + "\n")


def add_estimator_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``estimator train|predict`` to the top-level subcommands."""
    est = sub.add_parser("estimator", help="the per-prompt quality estimator (token-selection MoE)")
    esub = est.add_subparsers(dest="estimator_command", required=True)

    p = esub.add_parser(
        "train",
        help="train the MoE on a labels folder and write a model folder with its card",
        description="Train RouteT2I's dual-gate token-selection MoE on LABELS/TRAIN_SPLIT, early "
        "stopping on LABELS/VAL_SPLIT, and write config.json, model.safetensors, model_card.json "
        "and MODEL_CARD.md to --out.",
    )
    p.add_argument("--labels", default=DEFAULT_LABELS_DIR, help=f"default: {DEFAULT_LABELS_DIR}")
    p.add_argument("--out", default=DEFAULT_MODEL_DIR, help=f"default: {DEFAULT_MODEL_DIR}")
    p.add_argument("--train-split", default="train", choices=("train", "val", "test"))
    p.add_argument(
        "--val-split",
        default="val",
        choices=("train", "val", "test", "none"),
        help="split for early stopping and the card's val figures (default val; none = no val)",
    )
    p.add_argument("--features", choices=("contextual", "static"), default="contextual")
    p.add_argument(
        "--choices",
        default=",".join(c.name for c in DEFAULT_CHOICES),
        help="ENGINE@STEPS,... one row of Q each (default: %(default)s)",
    )
    p.add_argument("--edge-choice", default="edge_small@8", help="default: %(default)s")
    p.add_argument("--cloud-choice", default="cloud_large@20", help="default: %(default)s")
    p.add_argument("--epochs", type=positive_int, default=60, help="most epochs (default 60)")
    p.add_argument("--patience", type=positive_int, default=6, help="early stopping (default 6)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=positive_int, default=6, help="tokens per expert (default 6)")
    p.add_argument("--rank", type=positive_int, default=8, help="gate rank l (default 8)")
    p.add_argument("--hidden", type=positive_int, default=64, help="gate width h (default 64)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--prs-loss-weight", type=float, default=0.1, help="0 = no PRS loss")
    p.add_argument("--no-token-selection", action="store_true", help="ablation: all tokens")
    p.add_argument("--no-dual-gate", action="store_true", help="ablation: one projection")
    p.add_argument("--max-prompts", type=positive_int, help="use only a split's first N prompts")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_estimator_train)

    p = esub.add_parser(
        "predict",
        help="print predicted Q, utilities and the routing score, one JSON line per prompt",
    )
    p.add_argument("--prompts-file", required=True, help="one prompt per line")
    p.add_argument("--model", default=DEFAULT_MODEL_DIR, help=f"default: {DEFAULT_MODEL_DIR}")
    p.set_defaults(func=cmd_estimator_predict)

    from t2i_router.estimator.evaluate import add_evaluate_parser

    add_evaluate_parser(esub)
