"""`t2i-router estimator evaluate`: fit every routing method on train, score the test split.

Writes into ``--out``: ``evaluation.json`` (every figure with its 95% paired bootstrap interval,
the noise ceiling, the M-choice cost curves), ``evaluation.md`` (methods x PGR@20/50/80, APGR,
calls saved, and each method's paired difference from the reference: the MoE when present, else
the best learned baseline by APGR), ``pgr_curves.png`` and ``cost_quality.png``.

The MoE estimator (``t2i_router.estimator.quality.QualityEstimator``, built separately) is
imported only when a model folder is given or found at ``models/quality_estimator``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2i_router.errors import InvalidRequest, RouterError
from t2i_router.estimator import evaluation as ev
from t2i_router.estimator.baselines import (
    EmbeddingCache,
    KnnMethod,
    LengthMethod,
    LevelMethod,
    Method,
    MethodBase,
    OracleMethod,
    RandomMethod,
    default_pair,
    prompt_quality,
    utilities_from_q,
)
from t2i_router.estimator.labels import MANIFEST_FILE, LabelSet, load_labels
from t2i_router.estimator.pooled_models import CemsMethod, MlpConfig, MlpMethod
from t2i_router.estimator.win_classifier import WinClassifierConfig, WinClassifierMethod

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "EvaluateConfig",
    "MoeMethod",
    "add_evaluate_parser",
    "evaluate",
    "load_moe",
    "make_method",
]

METHODS: tuple[str, ...] = ("random", "length", "level", "knn", "mlp", "cems", "win", "oracle")
DEFAULT_MOE_DIR = "quality_estimator"  # under --models-dir
_LEARNED = ("moe", "knn", "mlp", "cems", "win", "level", "length")  # reference candidates


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of an evaluation run.

    Attributes:
        n_boot: Bootstrap resamples of the test prompts.
        seed: Seed of the bootstrap and of the random method.
        mlp: Training of the MLP and CEMS methods.
        win: Fine-tuning of the win classifier.
    """

    n_boot: int = 1000
    seed: int = 0
    mlp: MlpConfig = field(default_factory=MlpConfig)
    win: WinClassifierConfig = field(default_factory=WinClassifierConfig)


def make_method(
    name: str, *, test: LabelSet, cache: EmbeddingCache, config: EvaluateConfig
) -> Method:
    """Build the method called ``name`` (one of `METHODS`), not yet fitted."""
    if name == "random":
        return RandomMethod(seed=config.seed)
    if name == "length":
        return LengthMethod()
    if name == "level":
        return LevelMethod()
    if name == "knn":
        return KnnMethod(cache)
    if name == "mlp":
        return MlpMethod(cache, config.mlp)
    if name == "cems":
        return CemsMethod(cache, config.mlp)
    if name == "win":
        return WinClassifierMethod(config.win)
    if name == "oracle":
        return OracleMethod(test)
    raise InvalidRequest(f"unknown method {name!r}; known: {list(METHODS)}")


class MoeMethod(MethodBase):
    """The MoE quality estimator as one more method: utilities from its predicted Q (M x K).

    The estimator's interface (``QualityEstimator``): ``utilities(prompts)`` (N, M) if it has
    one, else ``predict(prompts)`` giving Q (N, M, K), from which the alignment aspects are
    averaged; ``choices`` names its M choices, whose order is aligned with the labels'.
    """

    name = "moe"

    def __init__(self, estimator: Any, choices: Sequence[str], name: str = "moe") -> None:
        super().__init__()
        self.estimator, self.choices = estimator, list(choices)
        self.name = name

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        """Already trained by ``t2i-router estimator train``; only checks its choices."""
        self._set_pair(train)
        names = [c.name for c in train.choices]
        if sorted(self.choices) != sorted(names):
            raise InvalidRequest(f"the MoE predicts choices {self.choices}, the labels {names}")
        self.order = [self.choices.index(n) for n in names]

    def utilities(self, prompts: Sequence[str]) -> np.ndarray:
        self._fitted()
        if hasattr(self.estimator, "utilities"):
            u = np.asarray(self.estimator.utilities(list(prompts)), np.float64)
            return u[:, self.order]
        out = self.estimator.predict(list(prompts))
        q = np.asarray(getattr(out, "q", out), np.float64)  # (N, M, K)
        return utilities_from_q(q[:, self.order])


def load_moe(model_dir: str | Path, choices: Sequence[str], name: str = "moe") -> MoeMethod:
    """Load the trained MoE from ``model_dir`` (a lazy import of its package).

    Raises:
        RouterError: when ``t2i_router.estimator.quality`` (the MoE's ``QualityEstimator``) is
            not in this checkout.
    """
    try:
        from t2i_router.estimator.quality import QualityEstimator
    except ImportError as e:
        raise RouterError(
            f"the MoE model {model_dir} needs t2i_router.estimator.quality, which this checkout "
            f"lacks ({e}); leave out --model or train it with `t2i-router estimator train`"
        ) from e
    estimator = QualityEstimator.load(model_dir)
    return MoeMethod(estimator, getattr(estimator, "choices", None) or choices, name)


def _load_splits(labels_dir: Path) -> tuple[LabelSet, LabelSet | None, LabelSet]:
    test = load_labels(labels_dir, "test")
    names = [c.name for c in test.choices]
    train = load_labels(labels_dir, "train", names)
    has_val = (labels_dir / "val" / MANIFEST_FILE).exists()
    val = load_labels(labels_dir, "val", names) if has_val else None
    return train, val, test


def _costs(test: LabelSet, models_dir: Path) -> np.ndarray | None:
    from t2i_router.estimator.choices import choice_costs

    try:
        costs = choice_costs(test.choices, models_dir)
    except RouterError as e:
        log.warning("no cost curves: %s", e)
        return None
    return np.array([costs[c.name].gflops for c in test.choices])


def evaluate(
    labels_dir: str | Path,
    out_dir: str | Path,
    methods: Sequence[str] | None = None,
    model_dir: str | Path | None = None,
    models_dir: str | Path = "models",
    config: EvaluateConfig | None = None,
    cache: EmbeddingCache | None = None,
    variants: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Fit ``methods`` (default all of `METHODS`) and the MoE, evaluate them on the test split.

    Args:
        labels_dir: Folder with ``train/``, ``test/`` and optionally ``val/`` labels.
        out_dir: Where the JSON, Markdown and PNGs go.
        methods: Names from `METHODS`.
        model_dir: The MoE's folder; default ``<models_dir>/quality_estimator`` if it exists.
        models_dir: Engines' folder (model cards give the choices' costs).
        config: Bootstrap and training settings.
        cache: Pooled embeddings to reuse (default a fresh cache).
        variants: More trained MoEs (e.g. ablations) by name -> folder, evaluated beside it.

    Returns:
        The payload written to ``evaluation.json``.
    """
    config = config or EvaluateConfig()
    names = list(METHODS if methods is None else methods)
    unknown = sorted(set(names) - set(METHODS))
    if unknown or not names:
        raise InvalidRequest(f"methods {names} must be some of {list(METHODS)}")
    labels_dir, out, models_dir = Path(labels_dir), Path(out_dir), Path(models_dir)
    train, val, test = _load_splits(labels_dir)
    cache = cache or EmbeddingCache()
    built: list[Method] = [make_method(n, test=test, cache=cache, config=config) for n in names]
    if model_dir is None and (models_dir / DEFAULT_MOE_DIR).exists():
        model_dir = models_dir / DEFAULT_MOE_DIR
    if model_dir is not None:
        built.insert(0, load_moe(model_dir, [c.name for c in test.choices]))
    for name, folder in (variants or {}).items():
        if name in METHODS or name == "moe" or name in {m.name for m in built}:
            raise InvalidRequest(f"variant name {name!r} is taken by a method; choose another")
        built.append(load_moe(folder, [c.name for c in test.choices], name))

    prompts = list(test.prompts)
    scores, utilities, info = {}, {}, {}
    for method in built:
        start = time.perf_counter()
        method.fit(train, val)
        fit_s = time.perf_counter() - start
        utilities[method.name] = method.utilities(prompts)
        scores[method.name] = method.score(prompts)
        info[method.name] = {
            "fit_s": round(fit_s, 3),
            "m_choice": utilities[method.name] is not None,
        }
        if isinstance(method, KnnMethod):
            info[method.name].update(k=method.k, k_val_mse=method.k_val_mse)
        log.info("%s: fitted in %.1f s", method.name, fit_s)

    q = prompt_quality(test)  # (N, M)
    edge, cloud = default_pair(test.choices)
    qe, qc = q[:, edge], q[:, cloud]
    boot = ev.bootstrap_metrics(qe, qc, scores, n_boot=config.n_boot, seed=config.seed)
    learned = [m for m in _LEARNED if m in scores]
    reference = "moe" if "moe" in scores else None
    if reference is None and learned:
        reference = max(learned, key=lambda m: boot.estimates[m]["apgr"])
    curves = {m: ev.deferral_curve(qe, qc, s) for m, s in scores.items()}

    align = test.alignment.astype(np.float64)  # (N, M, S)
    e_seed, c_seed = align[:, edge], align[:, cloud]
    oracle_half = ev.split_half_oracle(e_seed, c_seed)
    h = align.shape[2] // 2
    half_boot = ev.bootstrap_metrics(
        e_seed[:, h : 2 * h].mean(1),
        c_seed[:, h : 2 * h].mean(1),
        {"split_half_oracle": c_seed[:, :h].mean(1) - e_seed[:, :h].mean(1)},
        n_boot=config.n_boot,
        seed=config.seed,
        include_random=False,
    )
    reliability = ev.split_half_reliability(e_seed, c_seed)
    curves["split_half_oracle"] = oracle_half

    costs = _costs(test, models_dir)
    cost_quality, cq_curves = {}, {}
    if costs is not None:
        for m, u in utilities.items():
            if u is None:
                continue
            cq_curves[m] = ev.cost_quality_curve(q, u, costs)
            cost_quality[m] = {
                "curve": cq_curves[m].__dict__,
                "vs_fixed": [c.__dict__ for c in ev.compare_to_fixed(cq_curves[m])],
            }

    out.mkdir(parents=True, exist_ok=True)
    files = {"json": "evaluation.json", "markdown": "evaluation.md", "pgr_plot": "pgr_curves.png"}
    ev.plot_pgr_curves(curves, out / files["pgr_plot"], boot, title="PGR vs cloud rate (test)")
    if cq_curves:
        files["cost_plot"] = "cost_quality.png"
        ev.plot_cost_quality(
            cq_curves,
            out / files["cost_plot"],
            [c.name for c in test.choices],
            title="Quality vs cost (test)",
            cost_label="GFLOPs per image",
        )
    payload = {
        "data_version": {"train": train.data_version, "test": test.data_version}
        | ({"val": val.data_version} if val is not None else {}),
        "n_prompts": {"train": len(train.prompts), "test": len(prompts)}
        | ({"val": len(val.prompts)} if val is not None else {}),
        "n_test_seeds": int(align.shape[2]),
        "choices": [c.name for c in test.choices],
        "edge": test.choices[edge].name,
        "cloud": test.choices[cloud].name,
        "costs_gflops": costs,
        "methods": info,
        "reference": reference,
        "bootstrap": boot.to_dict(reference),
        "curves": {m: c.to_dict() for m, c in curves.items()},
        "noise_ceiling": {
            "split_half_oracle": half_boot.to_dict()["metrics"]["split_half_oracle"],
            "split_half_reliability": reliability.__dict__,
        },
        "cost_quality": cost_quality,
        "files": files,
    }
    ev.write_json(out / files["json"], payload)
    (out / files["markdown"]).write_text(_markdown(payload, boot, reference))
    return payload


def _markdown(payload: dict[str, Any], boot: ev.BootstrapResult, reference: str | None) -> str:
    ceiling = payload["noise_ceiling"]
    rel = ceiling["split_half_reliability"]
    half = {k: ev.Interval(**v) for k, v in ceiling["split_half_oracle"].items()}
    lines = [
        "# Routing evaluation on the test split",
        "",
        f"{payload['edge']} (edge) vs {payload['cloud']} (cloud); {payload['n_prompts']['test']} "
        f"test prompts x {payload['n_test_seeds']} seeds; trained on "
        f"{payload['n_prompts']['train']} prompts. `random` is the analytic expectation of "
        "random routing, `random_seeded` one seeded draw; `oracle` ranks by the very seeds it is "
        "scored on (the split-half oracle below is the honest ceiling).",
        "",
        ev.markdown_table(boot, reference),
        "## Noise ceiling",
        "",
        "Split-half oracle (rank by the gap on the first half of the seeds, score on the second): "
        + ", ".join(
            f"{ev.METRIC_LABELS[k]} {ev.format_interval(half[k])}" for k in ev.METRIC_NAMES
        ),
        "",
        f"Split-half correlation of the per-prompt gap {rel['correlation']:.3f} (Spearman-Brown "
        f"{rel['spearman_brown']:.3f}); prompt-level gap std {rel['prompt_gap_std']:.4f}.",
        "",
    ]
    if payload["cost_quality"]:
        lines += ["## Routed quality minus each fixed choice's, at that choice's cost", ""]
        choices = payload["choices"]
        lines += ["| method | " + " | ".join(choices) + " |", "|---|" + "---|" * len(choices)]
        for m, cq in payload["cost_quality"].items():
            cells = [f"{c['margin']:+.4f}" for c in cq["vs_fixed"]]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EvaluateConfig(
        n_boot=args.n_boot,
        seed=args.seed,
        win=WinClassifierConfig(
            epochs=args.win_epochs,
            freeze_layers=args.win_freeze_layers,
            max_train_prompts=args.win_max_train_prompts,
        ),
    )
    methods = [m for m in args.methods.split(",") if m.strip()]
    variants = {}
    for spec in args.variant or ():
        name, sep, folder = spec.partition("=")
        if not (sep and name and folder):
            raise InvalidRequest(f"--variant {spec!r} is not NAME=DIR")
        variants[name] = folder
    payload = evaluate(
        args.labels, args.out, methods, args.model, args.models_dir, config, variants=variants
    )
    summary = {m: v["apgr"]["estimate"] for m, v in payload["bootstrap"]["metrics"].items()}
    json.dump({"out": str(args.out), "apgr": summary}, sys.stdout)
    sys.stdout.write("\n")


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``estimator`` subcommands."""
    p = sub.add_parser(
        "evaluate",
        help="fit the baselines (and load the MoE), evaluate all on the test split",
        description="Fit every routing method on LABELS/train (val picks settings), score "
        "LABELS/test, and write evaluation.json, evaluation.md and PNG plots into OUT.",
    )
    p.add_argument("--labels", default="data/labels", help="labels folder (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list (default: all)")
    p.add_argument("--model", help=f"MoE folder (default: MODELS_DIR/{DEFAULT_MOE_DIR} if present)")
    p.add_argument(
        "--variant",
        action="append",
        metavar="NAME=DIR",
        help="another trained MoE (an ablation) evaluated beside the MoE; repeatable",
    )
    p.add_argument("--models-dir", default="models", help="engines and their cards")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and random seed")
    p.add_argument("--win-epochs", type=int, default=2, help="win classifier epochs")
    p.add_argument("--win-freeze-layers", type=int, default=0, help="lower MiniLM layers frozen")
    p.add_argument("--win-max-train-prompts", type=int, help="cap on its train prompts (CPU)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.set_defaults(func=cmd_evaluate)
