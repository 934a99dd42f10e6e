"""Batch invariance, measured: an image made in a batch against the same image made alone.

For each engine and sampler, ``--n`` tuning prompts (``prompts.tuning_prompts``) are generated in
one batch and each alone, with the same seeds, steps and guidance; the result is the share of
uint8 values that differ, the largest difference, and whether that is within the claim
(``t2i_router.engines.invariance``: at most 1 gray level on at most 0.1% of values, the rule
the tests assert). It also gives the UNet's own difference:
one denoiser call on a batch against the same rows one at a time (max |difference| in its
output), which is where a difference starts, and the first module whose rows differ
(docs/engines.md, "Batch invariance").

    .venv/bin/python benchmarks/batch_invariance.py --engine edge_small cloud_large
    # writes benchmarks/results/batch_invariance.json and prints a table
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from t2i_router.engines import Engine, invariance
from t2i_router.engines.prompts import image_seeds, tuning_prompts
from t2i_router.engines.sampler import SAMPLERS

log = logging.getLogger("batch_invariance")
ROOT = Path(__file__).resolve().parents[1]


@torch.inference_mode()
def unet_difference(engine: Engine, texts: list[str], timestep: int = 700) -> tuple[float, str]:
    """Max |denoiser(batch)[i] - denoiser(row i alone)| over the rows, on seeded noise, and the
    first module (in the order modules finish) whose output for row 0 differs between the two."""
    tokens, mask = (torch.from_numpy(a) for a in engine.encoder.encode(texts))
    x = torch.randn((len(texts), 3, 32, 32), generator=torch.Generator().manual_seed(0))
    t = torch.full((len(texts),), timestep, dtype=torch.int64)
    outputs: dict[str, list[torch.Tensor]] = {}

    def keep(name: str):
        def hook(module, inputs, output):
            output = output[0] if isinstance(output, tuple) else output
            if torch.is_tensor(output):
                outputs.setdefault(name, []).append(output[:1].clone())

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in engine.denoise.named_modules() if n]
    try:
        batch = engine.denoise(x, t, tokens, mask)
        first_row = engine.denoise(x[:1], t[:1], tokens[:1], mask[:1])
    finally:
        for h in handles:
            h.remove()
    first = next(
        (n for n, (a, b) in outputs.items() if a.shape == b.shape and not torch.equal(a, b)), "-"
    )
    rows = [
        first_row,
        *(
            engine.denoise(x[i : i + 1], t[:1], tokens[i : i + 1], mask[i : i + 1])
            for i in range(1, len(texts))
        ),
    ]
    return float((torch.cat(rows) - batch).abs().max()), first


def image_difference(engine: Engine, texts: list[str]) -> dict:
    """uint8 images of ``texts`` made in one batch against each made alone."""
    seeds = image_seeds(0, len(texts))
    batch = engine.generate(texts, seeds, batch_size=len(texts))
    alone = np.stack([engine.generate([t], [s])[0] for t, s in zip(texts, seeds, strict=True)])
    found = invariance.image_difference(alone, batch)
    return {
        "values": found.values,
        "values_differing": found.values_differing,
        "share_differing": found.share_differing,
        "images_differing": found.images_differing,
        "max_difference": found.max_difference,
        "within_claim": found.within_claim,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", nargs="+", default=["edge_small", "cloud_large"])
    parser.add_argument("--sampler", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--n", type=int, default=48, help="tuning prompts (default 48)")
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    texts = [t for t, _ in tuning_prompts(args.n)]
    rows = []
    for name in args.engine:
        engine = Engine.load(Path(args.models_dir) / name)
        unet, first = unet_difference(engine, texts[:8])
        for sampler in args.sampler:
            other = Engine(replace(engine.config, sampler=sampler), engine.denoise, engine.encoder)
            rows.append(
                {
                    "engine": name,
                    "sampler": sampler,
                    "steps": engine.config.default_steps,
                    "guidance": engine.config.default_guidance,
                    "unet_max_abs_difference": unet,
                    "first_differing_module": first,
                    **image_difference(other, texts),
                }
            )
            log.info("%s", rows[-1])
    out = Path(args.results_dir) / "batch_invariance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n_prompts": len(texts), "rows": rows}, indent=2) + "\n")
    print(
        "| engine | sampler | UNet max diff | first module differing | values differing | "
        "images differing | max | within claim |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['sampler']} | {r['unet_max_abs_difference']:.1e} | "
            f"{r['first_differing_module']} | "
            f"{r['values_differing']} of {r['values']} | {r['images_differing']} of {len(texts)} "
            f"| {r['max_difference']} | {'yes' if r['within_claim'] else 'NO'} |"
        )
    return rows


if __name__ == "__main__":
    main()
