"""How the cloud's gain over the edge is spread over prompts (issue 21, item 1).

Reads a labels split (default ``data/labels``, test: 600 held-out prompts x 8 seeds) and writes,
overall and per complexity level, for the edge default against the cloud default: the mean gap,
the split-half correlation and reliability (Spearman-Brown) of the per-prompt gap (seeds 1..S/2
vs the rest), the std of its prompt-level part (from the covariance of the two halves), the
split-half oracle's PGR at a 50% cloud rate, and the share of prompts on which the edge's
expected quality is within 0.02 of the cloud's; each next to issue 21's goal for the new edge.
Only prompts labelled for both choices are read, so a split still being labelled can be measured.

    .venv/bin/python benchmarks/gap_structure.py --labels data/labels --out docs/gap_structure
    # writes docs/gap_structure.json and docs/gap_structure.md
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from t2i_router.estimator.evaluation import gap_structure, write_json
from t2i_router.estimator.labels import Manifest, load_labels

log = logging.getLogger("gap_structure")

EDGE, CLOUD = "edge_small@8", "cloud_large@20"
TOLERANCE = 0.02
# Issue 21's goals for the new edge: (statistic, threshold), each to reach or exceed.
GOALS: dict[str, float] = {
    "split_half_reliability": 0.5,
    "prompt_gap_std": 0.08,
    "oracle_pgr50": 0.85,
    "share_edge_within": 0.30,
    "mean_gap": 0.08,
}
_COLUMNS = {
    "n_prompts": "prompts",
    "quality_edge": "edge",
    "quality_cloud": "cloud",
    "mean_gap": "mean gap",
    "split_half_correlation": "split-half r",
    "split_half_reliability": "reliability (S-B)",
    "prompt_gap_std": "prompt-level gap std",
    "image_gap_std": "image gap std",
    "oracle_pgr50": "split-half oracle PGR@50",
    "share_edge_within": f"share edge within {TOLERANCE}",
}


def measure(
    labels_dir: str | Path,
    split: str = "test",
    edge: str = EDGE,
    cloud: str = CLOUD,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """The gap structure of ``edge`` vs ``cloud`` on a labels split, with the goals met or not."""
    labels = load_labels(labels_dir, split, [edge, cloud])
    align = labels.alignment.astype("float64")  # (N, 2, S)
    result = gap_structure(align[:, 0], align[:, 1], labels.levels, tolerance=tolerance)
    manifest = Manifest.read(Path(labels_dir) / split)
    goals = {
        key: {
            "goal": goal,
            "value": result["all"][key],
            "met": bool(result["all"][key] >= goal) if math.isfinite(result["all"][key]) else False,
        }
        for key, goal in GOALS.items()
    }
    return {
        "split": split,
        "edge": edge,
        "cloud": cloud,
        "tolerance": tolerance,
        "data_version": labels.data_version,
        "engines_sha256": manifest.engines,
        "labelled_prompts_asked": manifest.prompts,
        **result,
        "goals_issue_21": goals,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: one row per level and overall, then issue 21's goals."""
    rows = [("all", report["all"]), *report["by_level"].items()]
    n, s = report["all"]["n_prompts"], report["all"]["n_seeds"]
    lines = [
        f"# Gap structure: {report['edge']} vs {report['cloud']}",
        "",
        f"{n} prompts of the {report['split']} split x {s} seeds (labels data version "
        f"`{report['data_version']}`; {report['labelled_prompts_asked']} prompts asked for, the "
        "prompts labelled for both choices so far are measured). Quality = mean alignment; gap "
        "= cloud - edge. Split halves: seeds 1..S/2 vs the rest. Written by "
        "`.venv/bin/python benchmarks/gap_structure.py --labels data/labels --out "
        "docs/gap_structure` (on the labels committed with this page).",
        "",
        "| level | " + " | ".join(_COLUMNS.values()) + " |",
        "|---|" + "---|" * len(_COLUMNS),
    ]
    lines += [
        f"| {name} | " + " | ".join(_fmt(st[k]) for k in _COLUMNS) + " |" for name, st in rows
    ]
    lines += ["", "Issue 21's goals for a new edge, on all prompts:", ""]
    lines += ["| statistic | goal | measured | met |", "|---|---|---|---|"]
    for key, g in report["goals_issue_21"].items():
        met = "yes" if g["met"] else "no"
        lines.append(f"| {_COLUMNS[key]} | >= {g['goal']} | {_fmt(g['value'])} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", default="data/labels", help="labels folder")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--edge", default=EDGE, help="edge choice (default: %(default)s)")
    parser.add_argument("--cloud", default=CLOUD, help="cloud choice (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument(
        "--out", default="docs/gap_structure", help="path stem: writes OUT.json and OUT.md"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = measure(args.labels, args.split, args.edge, args.cloud, args.tolerance)
    out = write_report(args.out, report, markdown(report))
    log.info("wrote %s.json and %s.md (%d prompts)", out, out, report["all"]["n_prompts"])
    return 0


def write_report(stem: str | Path, report: dict, text: str) -> Path:
    """Writes STEM.json (the report) and STEM.md (``text``), making STEM's folder; returns STEM."""
    out = Path(stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), report)
    out.with_suffix(".md").write_text(text)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
