"""Edge design comparison: which weak text conditioning makes a gap that grows with complexity.

Real edge models lose most on compositional prompts because their text conditioning is weaker
(DESIGN, "Engines"). This trains each candidate edge UNet for the same number of steps with the
engines' recipe, then scores it and the committed cloud engine on held-out tuning prompts
(``prompts.tuning_prompts``: never the ones ``t2i-router engines report`` measures; same seeds
and metrics as the report):

- ``pooled``: the pooled prompt embedding added to the time embedding, no cross-attention
  (the committed edge_small design);
- ``cross_attention_low``: token-level cross-attention at the lowest resolution only.

    .venv/bin/python benchmarks/edge_designs.py --steps 2000 [--resume]
    # checkpoints: runs/edge_designs/<design>/train_state.pt (resumable)
    # writes benchmarks/results/edge_designs.json and docs/edge_designs.md

The design to keep is the one whose gap to the cloud grows with complexity (relation and pair
gaps above the single-object gap) while the edge stays as good as the cloud on 20-60% of
prompts; ties go to the cheaper design.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from t2i_router.engines import ENGINES, Engine, TextEncoder, UNetConfig
from t2i_router.engines.config import EDGE_DESIGNS
from t2i_router.engines.prompts import tuning_prompts
from t2i_router.engines.recipe import TrainConfig
from t2i_router.engines.report import gap_report, per_level, score_engine
from t2i_router.engines.training import Trainer
from t2i_router.world import COMPLEXITY_LEVELS, mean_alignment

log = logging.getLogger("edge_designs")
ROOT = Path(__file__).resolve().parents[1]

EDGE = ENGINES["edge_small"]


def train_design(
    design: str,
    unet: UNetConfig,
    steps: int,
    out_dir: Path,
    train_cfg: TrainConfig,
    encoder: TextEncoder,
    resume: bool,
    cache_dir: Path | None,
    progress: bool = True,
) -> tuple[Engine, dict]:
    """Train (or resume) one candidate to ``steps`` steps; its EMA weights as an engine."""
    config = replace(EDGE, name=f"edge_{design}", unet=unet)
    trainer = Trainer(config, out_dir / design, train_cfg, encoder=encoder, cache_dir=cache_dir)
    if resume and (out_dir / design / "train_state.pt").exists():
        trainer.load_checkpoint()
    t0, start = time.monotonic(), trainer.step
    trainer.run(max_steps=steps, progress=progress, evaluate_at_end=False)
    info = {
        "parameters": trainer.model.n_parameters,
        "steps": trainer.step,
        "train_minutes": round(trainer.train_seconds / 60.0, 2),
        "steps_per_s_this_call": round((trainer.step - start) / (time.monotonic() - t0), 3),
        "loss_ema": None if trainer.loss_ema is None else round(trainer.loss_ema, 5),
    }
    return Engine(config, trainer.ema, encoder), info


def choose(designs: dict[str, dict]) -> str | None:
    """The design whose gap grows with complexity and leaves the edge a 20-60% share.

    Among several, the one with the steepest growth (relation gap minus single gap); None if
    no candidate qualifies.
    """
    ok = {
        name: d["gap"]["cloud_minus_edge"]["relation"] - d["gap"]["cloud_minus_edge"]["single"]
        for name, d in designs.items()
        if d["gap"]["goals"]["gap_grows_with_complexity"]
        and d["gap"]["goals"]["edge_as_good_on_20_to_60_percent"]
    }
    return max(ok, key=ok.get) if ok else None


def run(args: argparse.Namespace) -> dict:
    encoder = TextEncoder()
    train_cfg = TrainConfig(prompt_pool=args.prompt_pool)
    out_dir = Path(args.out_dir)
    pairs = tuning_prompts(args.n, train_cfg=train_cfg)
    levels = np.array([s.complexity for _, s in pairs])
    cloud = Engine.load(Path(args.models_dir) / "cloud_large", encoder)
    t0 = time.monotonic()
    cloud_align = mean_alignment(score_engine(cloud, pairs, args.seeds)[0])
    result: dict = {
        "steps": args.steps,
        "n_prompts": len(pairs),
        "seeds_per_prompt": args.seeds,
        "cloud": {
            "mean_alignment": per_level(cloud_align, levels),
            "seconds": round(time.monotonic() - t0, 1),
        },
        "designs": {},
    }
    for design in args.designs:
        engine, info = train_design(
            design,
            EDGE_DESIGNS[design],
            args.steps,
            out_dir,
            train_cfg,
            encoder,
            args.resume,
            Path(args.cache_dir) if args.cache_dir else None,
            progress=not args.quiet,
        )
        align = mean_alignment(score_engine(engine, pairs, args.seeds)[0])
        result["designs"][design] = {
            **info,
            "mean_alignment": per_level(align, levels),
            "gap": gap_report(align, cloud_align, levels),
        }
        log.info("%s: %s", design, result["designs"][design]["gap"]["cloud_minus_edge"])
    result["chosen"] = choose(result["designs"])
    return result


def table(result: dict) -> str:
    cols = [*COMPLEXITY_LEVELS, "all"]
    lines = [
        "| edge design | parameters | steps | " + " | ".join(cols) + " | edge >= cloud | grows |",
        "|---" * (len(cols) + 5) + "|",
    ]
    for name, d in result["designs"].items():
        g = d["gap"]
        lines.append(
            f"| {name} | {d['parameters']:,} | {d['steps']} | "
            + " | ".join(f"{g['cloud_minus_edge'][c]:+.3f}" for c in cols)
            + f" | {g['edge_at_least_as_good']['all']:.2f}"
            + f" | {'yes' if g['goals']['gap_grows_with_complexity'] else 'no'} |"
        )
    return (
        "Cloud minus edge mean alignment per complexity (positive: the cloud is better).\n\n"
        + "\n".join(lines)
        + f"\n\nChosen: {result['chosen'] or 'none qualifies'}.\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--designs", nargs="+", choices=list(EDGE_DESIGNS), default=list(EDGE_DESIGNS)
    )
    parser.add_argument("--steps", type=int, default=2000, help="training steps per design")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints")
    parser.add_argument("--n", type=int, default=200, help="tuning prompts (default 200)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--prompt-pool", type=int, default=TrainConfig.prompt_pool)
    parser.add_argument("--models-dir", default=str(ROOT / "models"), help="the cloud engine")
    parser.add_argument("--out-dir", default=str(ROOT / "runs/edge_designs"))
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/edge_designs.json"))
    parser.add_argument("--table", default=str(ROOT / "docs/edge_designs.md"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(
            "# Edge designs\n\nRegenerate: `.venv/bin/python benchmarks/edge_designs.py` (this run:"
            f" `{' '.join(sys.argv[1:] if argv is None else argv) or 'defaults'}`; "
            f"{result['n_prompts']} tuning prompts (report.tuning_prompts) x "
            f"{result['seeds_per_prompt']} seeds).\n\n" + table(result)
        )
    print(table(result))
    return result


if __name__ == "__main__":
    main()
