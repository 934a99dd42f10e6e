"""A candidate edge's gap structure against the labelled cloud, without relabelling (issue 21).

Draws a candidate edge's images for the first ``--prompts`` prompts of a labels split with the
first ``--seeds`` of the labeler's own image seeds (read from the labels, so each image pair
shares its noise with the cloud image it is compared with), scores them with the world's
metrics, and measures them against the cloud choice's labels: gap_structure's statistics per
level with issue 21's goals, and the gap on the prompts holding each concept (a group's color,
shape or size), which shows whether a concept made rare in training is drawn worse. Only the
edge's images are drawn; the cloud's come from the labels.

    .venv/bin/python benchmarks/gap_candidate.py --models-dir /tmp/pilot/models --prompts 500 \\
        --seeds 8 --out benchmarks/results/gap_candidate
    # writes OUT.json and OUT.md
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gap_structure import _COLUMNS, CLOUD, GOALS, TOLERANCE, _fmt, write_report

from t2i_router.engines import Engine
from t2i_router.engines.recipe import CONCEPTS
from t2i_router.estimator.evaluation import gap_structure
from t2i_router.estimator.labels import load_labels
from t2i_router.world import mean_alignment, parse_prompt, score_images

log = logging.getLogger("gap_candidate")


def edge_alignment(
    engine: Engine, prompts: Sequence[str], specs: Sequence[object], seeds: np.ndarray, steps: int
) -> np.ndarray:
    """(N, S) mean alignment of the engine's image of prompt i with seed ``seeds[i, s]``."""
    n, s = seeds.shape
    texts = [t for t in prompts for _ in range(s)]
    images = engine.generate(texts, seeds.ravel().tolist(), steps=steps)
    scores = score_images(images, [p for p in specs for _ in range(s)])
    return mean_alignment(scores).reshape(n, s)


def concept_gaps(
    specs: Sequence[object], edge: np.ndarray, cloud: np.ndarray
) -> dict[str, dict[str, float | int]]:
    """Per concept: prompts holding it, and their mean edge, cloud and gap (cloud - edge)."""
    out = {}
    held = [{v for g in spec.groups for v in (g.color, g.shape, g.size)} for spec in specs]
    for concept in CONCEPTS:
        rows = np.array([concept in h for h in held])
        if not rows.any():
            continue
        e, c = float(edge[rows].mean()), float(cloud[rows].mean())
        out[concept] = {"n_prompts": int(rows.sum()), "edge": e, "cloud": c, "gap": c - e}
    return out


def measure(
    models_dir: str | Path,
    labels_dir: str | Path,
    prompts: int,
    seeds: int,
    steps: Sequence[int],
    engine_name: str = "edge_small",
    split: str = "test",
    cloud: str = CLOUD,
) -> dict[str, Any]:
    """The candidate at each step count against ``cloud``'s labels, on the first prompts."""
    labels = load_labels(labels_dir, split, [cloud])
    n = min(prompts, len(labels.prompts))
    s = min(seeds, labels.seeds.shape[1])
    if n < prompts or s < seeds:
        log.warning("the labels hold %d prompts x %d seeds: measuring those", n, s)
    specs = [parse_prompt(t) for t in labels.specs[:n]]
    cloud_q = labels.alignment[:n, 0, :s].astype(np.float64)
    engine = Engine.load(Path(models_dir) / engine_name)
    report: dict[str, Any] = {
        "split": split,
        "cloud": cloud,
        "data_version": labels.data_version,
        "models_dir": str(models_dir),
        "engine": engine_name,
        "n_prompts": n,
        "n_seeds": s,
        "choices": {},
    }
    for k in steps:
        t0 = time.perf_counter()
        edge_q = edge_alignment(engine, labels.prompts[:n], specs, labels.seeds[:n, :s], k)
        seconds = time.perf_counter() - t0
        result = gap_structure(edge_q, cloud_q, labels.levels[:n], tolerance=TOLERANCE)
        goals = {
            key: {
                "goal": goal,
                "value": result["all"][key],
                "met": bool(math.isfinite(result["all"][key]) and result["all"][key] >= goal),
            }
            for key, goal in GOALS.items()
        }
        report["choices"][f"{engine_name}@{k}"] = {
            **result,
            "goals_issue_21": goals,
            "by_concept": concept_gaps(specs, edge_q.mean(1), cloud_q.mean(1)),
            "seconds_drawing": round(seconds, 1),
        }
        log.info("%s@%d: %d images in %.0f s", engine_name, k, n * s, seconds)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Candidate edge vs {report['cloud']}",
        "",
        f"{report['n_prompts']} prompts of the {report['split']} split x {report['n_seeds']} "
        f"seeds (labels `{report['data_version']}`; the cloud's images from the labels, the "
        f"edge's drawn from `{report['models_dir']}/{report['engine']}` with the same seeds). "
        "Written by `benchmarks/gap_candidate.py`.",
    ]
    for name, r in report["choices"].items():
        lines += ["", f"## {name}", "", "| level | " + " | ".join(_COLUMNS.values()) + " |"]
        lines.append("|---|" + "---|" * len(_COLUMNS))
        for level, st in [("all", r["all"]), *r["by_level"].items()]:
            lines.append(f"| {level} | " + " | ".join(_fmt(st[k]) for k in _COLUMNS) + " |")
        lines += ["", "| statistic | goal | measured | met |", "|---|---|---|---|"]
        for key, g in r["goals_issue_21"].items():
            met = "yes" if g["met"] else "no"
            lines.append(f"| {_COLUMNS[key]} | >= {g['goal']} | {_fmt(g['value'])} | {met} |")
        lines += ["", "| concept | prompts | edge | cloud | gap |", "|---|---|---|---|---|"]
        for concept, c in r["by_concept"].items():
            lines.append(
                f"| {concept} | {c['n_prompts']} | {_fmt(c['edge'])} | {_fmt(c['cloud'])} | "
                f"{_fmt(c['gap'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", required=True, help="folder holding the candidate")
    parser.add_argument(
        "--engine", default="edge_small", help="its folder name (default: %(default)s)"
    )
    parser.add_argument("--labels", default="data/labels", help="labels folder")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--cloud", default=CLOUD, help="cloud choice (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=100, help="first N prompts (default 100)")
    parser.add_argument("--seeds", type=int, default=4, help="first S seeds (default 4)")
    parser.add_argument(
        "--steps", default="8", help="edge step counts, comma-separated (default: 8)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--out", default="benchmarks/results/gap_candidate", help="path stem")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    steps = [int(k) for k in args.steps.split(",") if k.strip()]
    report = measure(
        args.models_dir,
        args.labels,
        args.prompts,
        args.seeds,
        steps,
        args.engine,
        args.split,
        args.cloud,
    )
    out = write_report(args.out, report, markdown(report))
    log.info("wrote %s.json and %s.md", out, out)
    return report


if __name__ == "__main__":
    main()
