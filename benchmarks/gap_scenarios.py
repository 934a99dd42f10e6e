"""What-if gap structures: the labelled edge's images shifted by level and concept (issue 21).

A back-of-envelope for choosing a narrower edge's curriculum before training it: each scenario
takes the labelled edge's per-image alignment (so every image keeps its real seed noise), adds a
shift to the prompts of some levels (``single=+0.02``: a better edge on single objects;
``pair=-0.25``: a worse one on pairs) and to the single- and group-level prompts holding a concept
(``purple=-0.2``: a rare color drawn badly in simple scenes; two-group prompts take their level's
shift), clips to [0, 1], and measures gap_structure's statistics against the cloud's labels with
issue 21's goals. A scenario is ``name:key=shift,key=shift``.

    .venv/bin/python benchmarks/gap_scenarios.py --labels data/labels \\
        --scenario "two-group bad:pair=-0.25,relation=-0.25" \\
        --scenario "and purple rare:pair=-0.25,relation=-0.25,purple=-0.2" \\
        --out benchmarks/results/gap_scenarios
    # writes OUT.json and OUT.md
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gap_structure import _COLUMNS, CLOUD, EDGE, GOALS, TOLERANCE, _fmt, write_report

from t2i_router.engines.recipe import CONCEPTS
from t2i_router.estimator.evaluation import gap_structure
from t2i_router.estimator.labels import load_labels
from t2i_router.world import COMPLEXITY_LEVELS, parse_prompt

log = logging.getLogger("gap_scenarios")
SIMPLE = ("single", "group")


def parse_scenario(text: str) -> tuple[str, dict[str, float]]:
    """``"name:pair=-0.25,purple=-0.2"`` as (name, shifts); the error quotes the bad part."""
    name, sep, body = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:KEY=SHIFT,...")
    shifts: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in (*COMPLEXITY_LEVELS, *CONCEPTS):
            raise argparse.ArgumentTypeError(
                f"{part!r} in {text!r}: KEY must be a level or a concept"
            )
        try:
            shifts[key] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {value!r} is not a number") from None
    return name.strip(), shifts


def shifted(
    edge: np.ndarray, levels: np.ndarray, specs: Sequence[object], shifts: dict[str, float]
) -> np.ndarray:
    """(N, S) edge alignment with each level's shift, then each concept's on simple prompts."""
    out = edge.copy()
    for level in COMPLEXITY_LEVELS:
        out[levels == level] += shifts.get(level, 0.0)
    simple = np.isin(levels, SIMPLE)
    held = [{v for g in s.groups for v in (g.color, g.shape, g.size)} for s in specs]
    for concept in CONCEPTS:
        if concept in shifts:
            rows = simple & np.array([concept in h for h in held])
            # a concept's shift replaces its level's: the simple scene drawn with the rare word
            out[rows] = edge[rows] + shifts[concept]
    return np.clip(out, 0.0, 1.0)


def measure(
    labels_dir: str | Path,
    scenarios: Sequence[tuple[str, dict[str, float]]],
    split: str = "test",
    edge: str = EDGE,
    cloud: str = CLOUD,
) -> dict[str, Any]:
    labels = load_labels(labels_dir, split, [edge, cloud])
    align = labels.alignment.astype(np.float64)  # (N, 2, S)
    specs = [parse_prompt(s) for s in labels.specs]
    rows = {}
    for name, shifts in [("as labelled", {}), *scenarios]:
        q = shifted(align[:, 0], labels.levels, specs, shifts)
        stats = gap_structure(q, align[:, 1], labels.levels, tolerance=TOLERANCE)["all"]
        met = {k: bool(math.isfinite(stats[k]) and stats[k] >= g) for k, g in GOALS.items()}
        rows[name] = {"shifts": shifts, **stats, "goals_met": met}
    return {
        "labels": str(labels_dir),
        "split": split,
        "edge": edge,
        "cloud": cloud,
        "data_version": labels.data_version,
        "n_prompts": int(align.shape[0]),
        "n_seeds": int(align.shape[2]),
        "scenarios": rows,
    }


def _argv(report: dict[str, Any]) -> str:
    """The ``--scenario`` flags that remake the report's scenarios."""
    flags = []
    for name, r in report["scenarios"].items():
        if r["shifts"]:
            body = ",".join(f"{k}={v:g}" for k, v in r["shifts"].items())
            flags.append(f'--scenario "{name}:{body}"')
    return " ".join(flags)


def markdown(report: dict[str, Any]) -> str:
    keys = list(GOALS)
    lines = [
        f"# What-if gap structures ({report['edge']} shifted, vs {report['cloud']})",
        "",
        f"{report['n_prompts']} prompts x {report['n_seeds']} seeds of the {report['split']} "
        f"labels (`{report['data_version']}`); a starred value meets issue 21's goal. Written "
        "by `.venv/bin/python benchmarks/gap_scenarios.py "
        f"--labels {report['labels']} {_argv(report)}`.",
        "",
        "| scenario | shifts | " + " | ".join(_COLUMNS[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for name, r in report["scenarios"].items():
        shifts = ", ".join(f"{k} {v:+g}" for k, v in r["shifts"].items()) or "-"
        cells = [_fmt(r[k]) + ("*" if r["goals_met"][k] else "") for k in keys]
        lines.append(f"| {name} | {shifts} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", default="data/labels", help="labels folder")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--edge", default=EDGE, help="edge choice (default: %(default)s)")
    parser.add_argument("--cloud", default=CLOUD, help="cloud choice (default: %(default)s)")
    parser.add_argument(
        "--scenario", type=parse_scenario, action="append", default=[], help="NAME:KEY=SHIFT,..."
    )
    parser.add_argument("--out", default="benchmarks/results/gap_scenarios", help="path stem")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = measure(args.labels, args.scenario, args.split, args.edge, args.cloud)
    out = write_report(args.out, report, markdown(report))
    log.info("wrote %s.json and %s.md", out, out)
    return report


if __name__ == "__main__":
    main()
