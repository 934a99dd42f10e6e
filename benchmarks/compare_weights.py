"""Did a training segment help? An engine's weights against a baseline, on tuning prompts.

Scores two sets of weights of one engine (by default: the committed ones at a git revision
against those in ``models/<engine>/`` now) on the same tuning prompts and seeds
(``prompts.tuning_prompts``: never training prompts nor the report's), both sampled the same way
(the candidate's default sampler, steps and guidance, or ``--sampler``), with the report's
metrics and composition controls. The difference per complexity
level comes with its paired standard error over prompts, so a change can be told from seed and
prompt noise before the weights are committed and the report is run.

    .venv/bin/python benchmarks/compare_weights.py --engine cloud_large --baseline HEAD
    # writes benchmarks/results/compare_<engine>.json and docs/compare_<engine>.md
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from sampling_sweep import weights_id

from t2i_router.engines import Engine
from t2i_router.engines.engine import CONFIG_FILE, WEIGHTS_FILE
from t2i_router.engines.prompts import TUNING_SEED, tuning_prompts
from t2i_router.engines.report import (
    CONTROLS,
    control_table,
    controls_summary,
    onnx_engine,
    per_level,
    score_engine,
)
from t2i_router.engines.sampler import SAMPLER_LABELS, SAMPLERS
from t2i_router.world import COMPLEXITY_LEVELS, mean_alignment

log = logging.getLogger("compare_weights")
ROOT = Path(__file__).resolve().parents[1]


def checkout_weights(revision: str, engine: str, out_dir: Path, repo: Path | None = None) -> Path:
    """``models/<engine>/`` weights and config as committed at git ``revision`` in ``repo``
    (default: this repository), in ``out_dir``."""
    repo = repo or ROOT
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        spec = f"{revision}:models/{engine}/{name}"
        done = subprocess.run(["git", "show", spec], cwd=repo, capture_output=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"cannot read {spec}: {done.stderr.decode().strip()}")
        (out_dir / name).write_bytes(done.stdout)
    return out_dir


def same_sampling(engines: dict[str, Engine], sampler: str | None = None) -> dict[str, Engine]:
    """The engines with the last one's default sampling (and ``sampler``, if given): weights
    are what is compared, so a baseline committed under other defaults samples as the candidate
    does."""
    cand = list(engines.values())[-1].config
    fields = {
        "sampler": sampler or cand.sampler,
        "default_steps": cand.default_steps,
        "default_guidance": cand.default_guidance,
        "guidance_rescale": cand.guidance_rescale,
    }
    return {
        name: Engine(replace(e.config, **fields), e.denoise, e.encoder)
        for name, e in engines.items()
    }


def paired_difference(base: np.ndarray, cand: np.ndarray, levels: np.ndarray) -> dict:
    """Per level and over all: mean of ``cand - base`` over prompts and its standard error."""
    out = {}
    for lv in [*COMPLEXITY_LEVELS, "all"]:
        d = (cand - base) if lv == "all" else (cand - base)[levels == lv]
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out[lv] = {"mean": round(float(d.mean()), 4), "se": round(se, 4)}
    return out


def compare(engines: dict[str, Engine], pairs: list, seeds_per_prompt: int) -> dict:
    """Mean alignment per level and composition controls of each engine, and the paired
    difference of the second from the first."""
    levels = np.array([s.complexity for _, s in pairs])
    result: dict = {"engines": {}}
    align = {}
    for name, engine in engines.items():
        q, _, controls = score_engine(engine, pairs, seeds_per_prompt)
        align[name] = mean_alignment(q)
        result["engines"][name] = {
            "mean_alignment": per_level(align[name], levels),
            "controls": controls_summary(controls),
        }
        log.info("%s: %s", name, result["engines"][name]["mean_alignment"])
    base, cand = list(align)
    result["difference"] = paired_difference(align[base], align[cand], levels)
    return result


def table(result: dict) -> str:
    cols = [*COMPLEXITY_LEVELS, "all"]
    lines = ["| weights | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in result["engines"].items():
        lines.append(
            f"| {name} | " + " | ".join(f"{r['mean_alignment'][c]:.3f}" for c in cols) + " |"
        )
    d = result["difference"]
    lines.append(
        "| difference (+- s.e.) | "
        + " | ".join(f"{d[c]['mean']:+.3f} +- {d[c]['se']:.3f}" for c in cols)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="cloud_large")
    parser.add_argument(
        "--baseline",
        default="HEAD",
        help="git revision whose committed weights are the baseline (default HEAD)",
    )
    parser.add_argument("--baseline-dir", help="an engine directory as the baseline instead")
    parser.add_argument("--n", type=int, default=200, help="tuning prompts (default 200)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnxruntime"),
        default="onnxruntime",
        help="what runs the UNets (default onnxruntime, as Triton serves them)",
    )
    parser.add_argument(
        "--sampler", choices=SAMPLERS, help="sampler for both (default: the candidate's)"
    )
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--docs-dir", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    candidate_dir = Path(args.models_dir) / args.engine
    with tempfile.TemporaryDirectory(prefix="compare-weights-") as scratch:
        if args.baseline_dir:
            baseline_dir, baseline_name = Path(args.baseline_dir), str(args.baseline_dir)
        else:
            baseline_dir = checkout_weights(args.baseline, args.engine, Path(scratch) / "base")
            baseline_name = f"committed at {args.baseline}"
        shown = candidate_dir.resolve()
        shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else candidate_dir
        dirs = {baseline_name: baseline_dir, f"{shown} now": candidate_dir}
        engines = same_sampling(
            {name: Engine.load(d) for name, d in dirs.items()}, sampler=args.sampler
        )
        sampling = next(iter(engines.values())).config.sampling()
        if args.runtime == "onnxruntime":
            engines = {
                name: onnx_engine(e, Path(scratch) / f"onnx{i}")
                for i, (name, e) in enumerate(engines.items())
            }
        pairs = tuning_prompts(args.n)
        result = compare(engines, pairs, args.seeds)
        for name, d in dirs.items():  # while a checked-out baseline is still on disk
            result["engines"][name]["weights"] = weights_id(d)
    argv = sys.argv[1:] if argv is None else argv
    result.update(
        engine=args.engine,
        n_prompts=len(pairs),
        seeds=args.seeds,
        prompt_seed=TUNING_SEED,
        runtime=args.runtime,
        sampling=sampling,
        command=" ".join(
            ["benchmarks/compare_weights.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    )
    out = Path(args.results_dir) / f"compare_{args.engine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    weights = "\n".join(f"- {name}: {r['weights']}" for name, r in result["engines"].items())
    doc = Path(args.docs_dir) / f"compare_{args.engine}.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(
        f"# {args.engine}: new weights against a baseline\n\n"
        f"{len(pairs)} tuning prompts (sampler seed {TUNING_SEED}) x {args.seeds} seeds, mean "
        f"alignment, both sampled with {SAMPLER_LABELS[sampling['sampler']]} at "
        f"{sampling['steps']} steps, guidance {sampling['guidance']}, UNets run by "
        f"{args.runtime}. "
        f"Regenerate: `.venv/bin/python {result['command']}`.\n\n{weights}\n\n{table(result)}\n"
        f"Composition controls ({', '.join(CONTROLS)}; see docs/engines_report.md):\n\n"
        f"{control_table(result)}"
    )
    print(table(result), end="")
    return result


if __name__ == "__main__":
    main()
