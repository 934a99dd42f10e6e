"""Sampling sweep: an engine's quality and cost over sampler x steps x guidance scale.

Backs each engine's default steps and guidance (EngineConfig.default_steps/default_guidance):
it scores the committed engine on held-out tuning prompts (``prompts.tuning_prompts``: neither
training prompts nor the ones ``t2i-router engines report`` measures, so no default is chosen on
the report's own prompts; same seeds and metrics as the report) at every combination, and times
the generation. Each finished setting is written at once; ``--resume`` skips those already written.

    .venv/bin/python benchmarks/sampling_sweep.py --engine edge_small --steps 4 6 8
    .venv/bin/python benchmarks/sampling_sweep.py --engine cloud_large --steps 20 --guidance 2 3 4
    .venv/bin/python benchmarks/sampling_sweep.py --engine edge_small --sampler ddim unipc --resume
    # writes benchmarks/results/sampling_<engine>.json and docs/sampling_<engine>.md
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from t2i_router.engines import Engine
from t2i_router.engines.engine import WEIGHTS_FILE
from t2i_router.engines.prompts import TUNING_SEED, image_seeds, tuning_prompts
from t2i_router.engines.recipe import STATE_FILE
from t2i_router.engines.report import per_level
from t2i_router.engines.sampler import SAMPLERS
from t2i_router.world import COMPLEXITY_LEVELS, mean_alignment, score_images

log = logging.getLogger("sampling_sweep")
ROOT = Path(__file__).resolve().parents[1]


def _key(row: dict) -> tuple[str, int, float, float]:
    # rows written before samplers were swept are DDIM's
    return (
        row.get("sampler", "ddim"),
        row["steps"],
        row["guidance"],
        row.get("guidance_rescale", 0.0),
    )


def sweep(
    engine: Engine,
    pairs: list,
    steps: list[int],
    guidance: list[float],
    seeds_per_prompt: int = 2,
    done: list[dict] | None = None,
    on_row=None,
    rescale: list[float] | None = None,
    samplers: list[str] | None = None,
) -> list[dict]:
    """One row per (sampler, steps, guidance, guidance rescale); rows in ``done`` are kept, not
    rerun; ``on_row(rows)`` is called after each new one. ``samplers`` and ``rescale`` default
    to the engine's own."""
    texts = [t for t, _ in pairs]
    specs = [s for _, s in pairs]
    levels = np.array([s.complexity for s in specs])
    finished = {_key(r): r for r in done or []}
    rows = []
    for sampler, r in itertools.product(
        samplers or [engine.config.sampler], rescale or [engine.config.guidance_rescale]
    ):
        rescaled = Engine(
            replace(engine.config, guidance_rescale=r, sampler=sampler),
            engine.denoise,
            engine.encoder,
        )
        for n_steps in steps:
            for g in guidance:
                what = f"{sampler} steps {n_steps} guidance {g:.2f} rescale {r:.2f}"
                if (sampler, n_steps, g, r) in finished:
                    rows.append(finished[(sampler, n_steps, g, r)])
                    log.info("%s: kept", what)
                    continue
                t0 = time.perf_counter()
                seeds = [image_seeds(k, len(texts)) for k in range(seeds_per_prompt)]
                scores = [
                    score_images(rescaled.generate(texts, s, steps=n_steps, guidance=g), specs)
                    for s in seeds
                ]
                seconds = time.perf_counter() - t0
                rows.append(
                    {
                        "sampler": sampler,
                        "steps": n_steps,
                        "guidance": g,
                        "guidance_rescale": r,
                        "mean_alignment": per_level(
                            mean_alignment(np.mean(scores, axis=0)), levels
                        ),
                        "seconds_per_image": round(seconds / (len(texts) * seeds_per_prompt), 4),
                    }
                )
                log.info("%s: %s", what, rows[-1]["mean_alignment"])
                if on_row is not None:
                    on_row(rows)
    return rows


def weights_id(engine_dir: Path) -> str:
    """``model.safetensors`` named by the first 16 hex digits of its SHA-256, and its step."""
    digest = hashlib.sha256((engine_dir / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    state = engine_dir / STATE_FILE
    if not state.exists():
        return f"sha256 {digest}"
    step = torch.load(state, weights_only=False, map_location="cpu")["step"]
    return f"sha256 {digest} (training step {step})"


def table(engine: str, rows: list[dict]) -> str:
    cols = [*COMPLEXITY_LEVELS, "all"]
    lines = [
        "| sampler | steps | guidance | rescale | " + " | ".join(cols) + " | s/image |",
        "|---" * (len(cols) + 5) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r.get('sampler', 'ddim')} | {r['steps']} | {r['guidance']} | "
            f"{r.get('guidance_rescale', 0.0)} | "
            + " | ".join(f"{r['mean_alignment'][c]:.3f}" for c in cols)
            + f" | {r['seconds_per_image']} |"
        )
    return f"Mean alignment of {engine} per complexity.\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="edge_small")
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 6, 8])
    parser.add_argument("--guidance", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    parser.add_argument(
        "--rescale",
        nargs="+",
        type=float,
        help="guidance rescale values (default: the engine's own)",
    )
    parser.add_argument(
        "--sampler",
        nargs="+",
        choices=SAMPLERS,
        help="samplers (default: the engine's own)",
    )
    parser.add_argument("--n", type=int, default=200, help="tuning prompts (default 200)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument(
        "--prompt-seed",
        type=int,
        default=TUNING_SEED,
        help=f"sampler seed of the tuning prompts (default {TUNING_SEED})",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the settings already in the results JSON"
    )
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--docs-dir", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    engine_dir = Path(args.models_dir) / args.engine
    engine = Engine.load(engine_dir)
    pairs = tuning_prompts(args.n, seed=args.prompt_seed)
    meta = {
        "engine": args.engine,
        # which weights the rows measure: a resume over other weights is refused
        "weights": weights_id(engine_dir),
        "n_prompts": len(pairs),
        "seeds": args.seeds,
        "prompt_seed": args.prompt_seed,
    }
    out = Path(args.results_dir) / f"sampling_{args.engine}.json"
    done: list[dict] = []
    commands: list[str] = []
    if args.resume and out.exists():
        previous = json.loads(out.read_text())
        if {k: previous.get(k) for k in meta} != meta:
            theirs = {k: previous.get(k) for k in meta}
            parser.error(f"--resume: {out} was written with {theirs}, this run is {meta}")
        done = previous["rows"]
        commands = previous.get("commands", [])
    argv = sys.argv[1:] if argv is None else argv
    commands.append(" ".join(["benchmarks/sampling_sweep.py", *argv]))
    out.parent.mkdir(parents=True, exist_ok=True)

    def merged(rows: list[dict]) -> list[dict]:
        return sorted({_key(r): r for r in done + rows}.values(), key=_key)

    def save(rows: list[dict]) -> None:
        result = {**meta, "commands": commands, "rows": merged(rows)}
        out.write_text(json.dumps(result, indent=2) + "\n")

    rows = sweep(
        engine,
        pairs,
        args.steps,
        args.guidance,
        args.seeds,
        done,
        save,
        rescale=args.rescale,
        samplers=args.sampler,
    )
    save(rows)
    doc = Path(args.docs_dir) / f"sampling_{args.engine}.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(
        f"# Sampling sweep: {args.engine}\n\nWeights: {meta['weights']}. "
        f"{len(pairs)} tuning prompts (sampler seed "
        f"{args.prompt_seed}; none is a training prompt or one the engine report scores) x "
        f"{args.seeds} seeds. Regenerate (each later command adds its settings to the table):\n\n"
        "```\n"
        + "\n".join(f".venv/bin/python {c}" for c in commands)
        + "\n```\n\n"
        + table(args.engine, merged(rows))
    )
    print(table(args.engine, merged(rows)))
    return rows


if __name__ == "__main__":
    main()
