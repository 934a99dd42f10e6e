"""Sampling sweep: an engine's quality and cost over DDIM steps x guidance scale.

Backs each engine's default steps and guidance (EngineConfig.default_steps/default_guidance):
it scores the committed engine on the report's held-out prompts (same prompts, seeds and metrics
as ``t2i-router engines report``) at every combination, and times the generation.

    .venv/bin/python benchmarks/sampling_sweep.py --engine edge_small --steps 4 6 8
    .venv/bin/python benchmarks/sampling_sweep.py --engine cloud_large --steps 20 --guidance 1.5 2 3
    # writes benchmarks/results/sampling_<engine>.json and docs/sampling_<engine>.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from t2i_router.engines import Engine
from t2i_router.engines.report import held_out_prompts, per_level, training_texts
from t2i_router.world import COMPLEXITY_LEVELS, mean_alignment, score_images

log = logging.getLogger("sampling_sweep")
ROOT = Path(__file__).resolve().parents[1]


def sweep(
    engine: Engine,
    pairs: list,
    steps: list[int],
    guidance: list[float],
    seeds_per_prompt: int = 2,
) -> list[dict]:
    texts = [t for t, _ in pairs]
    specs = [s for _, s in pairs]
    levels = np.array([s.complexity for s in specs])
    rows = []
    for n_steps in steps:
        for g in guidance:
            t0 = time.perf_counter()
            scores = [
                score_images(
                    engine.generate(
                        texts,
                        [k * 1_000_003 + i for i in range(len(texts))],
                        steps=n_steps,
                        guidance=g,
                    ),
                    specs,
                )
                for k in range(seeds_per_prompt)
            ]
            seconds = time.perf_counter() - t0
            rows.append(
                {
                    "steps": n_steps,
                    "guidance": g,
                    "mean_alignment": per_level(mean_alignment(np.mean(scores, axis=0)), levels),
                    "seconds_per_image": round(seconds / (len(texts) * seeds_per_prompt), 4),
                }
            )
            log.info("steps %d guidance %.2f: %s", n_steps, g, rows[-1]["mean_alignment"])
    return rows


def table(engine: str, rows: list[dict]) -> str:
    cols = [*COMPLEXITY_LEVELS, "all"]
    lines = [
        "| steps | guidance | " + " | ".join(cols) + " | s/image |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['guidance']} | "
            + " | ".join(f"{r['mean_alignment'][c]:.3f}" for c in cols)
            + f" | {r['seconds_per_image']} |"
        )
    return f"Mean alignment of {engine} per complexity.\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="edge_small")
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 6, 8])
    parser.add_argument("--guidance", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    parser.add_argument("--n", type=int, default=200, help="held-out prompts (default 200)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--docs-dir", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    engine = Engine.load(Path(args.models_dir) / args.engine)
    pairs = held_out_prompts(args.n, exclude=training_texts())
    rows = sweep(engine, pairs, args.steps, args.guidance, args.seeds)
    result = {"engine": args.engine, "n_prompts": len(pairs), "seeds": args.seeds, "rows": rows}
    out = Path(args.results_dir) / f"sampling_{args.engine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    doc = Path(args.docs_dir) / f"sampling_{args.engine}.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(
        f"# Sampling sweep: {args.engine}\n\nRegenerate: `.venv/bin/python "
        f"benchmarks/sampling_sweep.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
        f"({len(pairs)} held-out prompts x {args.seeds} seeds).\n\n" + table(args.engine, rows)
    )
    print(table(args.engine, rows))
    return rows


if __name__ == "__main__":
    main()
