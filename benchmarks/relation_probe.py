"""Does an engine place a relation's two groups where the prompt says, and when in sampling?

For tuning prompts with a relation whose two groups differ in color, the probe follows each
image through DDIM sampling (whatever the engine's own sampler) and measures, in the prediction
of the final image after chosen steps (``diffusion_sample``'s ``on_step``), the offset between
the two groups' color centroids along the relation's axis, signed so that a positive offset is
the prompted side ("A left of B": B's centroid to the right of A's), and the offset across it.
Colors are assigned softly (a softmax over the palette), so the blurred predictions of the
first, noisiest steps are measured too. Ground-truth renders give the scale (about +16 px
along); an engine that ignores the relation gives about 0 at every step.

For a cross-attention engine it also looks inside the UNet: the prompts' ground-truth renders
are noised to chosen timesteps and denoised once, and from the full-resolution cross-attention
maps it takes the offset between where the two groups' color and shape words attend (their
attention centroids, signed like the image offset) and the grounding loss
(``engines.grounding``). At t = 999 nothing of the scene is left to see: an offset there can
only come from the prompt.

    .venv/bin/python benchmarks/relation_probe.py --engine cloud_large=models/cloud_large
    # writes benchmarks/results/relation_probe.json and docs/relation_probe.md
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from t2i_router.engines import Engine
from t2i_router.engines.grounding import AttentionMaps, grounding_loss, group_token_masks
from t2i_router.engines.prompts import TUNING_SEED, image_seeds, tuning_prompts
from t2i_router.engines.report import onnx_engine
from t2i_router.engines.sampler import diffusion_sample, make_scheduler
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.world import ASPECTS, IMAGE_SIZE, render, score_images
from t2i_router.world.metrics import RELATION_AXES
from t2i_router.world.renderer import render_with_masks
from t2i_router.world.spec import SceneSpec, opposite_relation
from t2i_router.world.vocab import PALETTE

log = logging.getLogger("relation_probe")
ROOT = Path(__file__).resolve().parents[1]

_NAMES = list(PALETTE)
_PALETTE = np.array([PALETTE[k] for k in _NAMES], dtype=np.float64)
SOFTNESS = 30.0  # RGB distance scale of the soft color assignment
_PRIOR = 1e-3  # pixels' worth of each color at the image's centre


def group_offsets(images: np.ndarray, specs: Sequence[SceneSpec]) -> np.ndarray:
    """(N, 2): the signed offset of the second group's color centroid from the first's along
    the relation's axis (positive: the prompted side) and its size across it, in pixels.

    ``images`` are (N, 32, 32, 3) RGB in [0, 255], any float; each pixel belongs to the palette
    colors by a softmax of minus its squared distance to them over ``2 * SOFTNESS**2``.
    """
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} images for {len(specs)} specs")
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    centre = (IMAGE_SIZE - 1) / 2
    out = np.zeros((len(specs), 2))
    for n, (img, spec) in enumerate(zip(images, specs, strict=True)):
        if spec.relation is None or spec.groups[0].color == spec.groups[1].color:
            raise ValueError(f"{spec.to_text()!r}: needs a relation between two colors")
        d = ((np.asarray(img, np.float64)[:, :, None, :] - _PALETTE) ** 2).sum(-1)
        p = np.exp(-(d - d.min(-1, keepdims=True)) / (2 * SOFTNESS**2))
        p /= p.sum(-1, keepdims=True)
        centroids = []
        for g in spec.groups:
            w = p[:, :, _NAMES.index(g.color)]
            # a little mass at the centre: a color found nowhere stands in the middle
            total = w.sum() + _PRIOR
            centroids.append((np.array([(w * xs).sum(), (w * ys).sum()]) + _PRIOR * centre) / total)
        axis, sign = RELATION_AXES[spec.relation]
        delta = centroids[1] - centroids[0]
        out[n] = sign * delta[axis], abs(delta[1 - axis])
    return out


def relation_pairs(n: int, seed: int = TUNING_SEED) -> list[tuple[str, SceneSpec]]:
    """The relation prompts among ``n`` tuning prompts whose two groups differ in color."""
    return [
        (t, s)
        for t, s in tuning_prompts(n, seed)
        if s.relation is not None and s.groups[0].color != s.groups[1].color
    ]


def probe_engine(
    engine: Engine, pairs: Sequence[tuple[str, SceneSpec]], seeds: int, at: Sequence[int]
) -> dict:
    """Offsets (mean along, share along > 0, mean across) after each step in ``at`` (negative
    counts from the end) and the final images' relation aspect, over prompts x seeds."""
    texts, specs = [t for t, _ in pairs], [s for _, s in pairs]
    steps = engine.config.default_steps
    wanted = sorted({a % steps for a in at})
    tokens, mask = (torch.from_numpy(a) for a in engine.encoder.encode(texts))
    null_tokens, null_mask = engine.null_condition()
    found: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
    relation = []

    def on_step(i: int, x0: torch.Tensor) -> None:
        if i in found:
            rgb = ((x0.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
            found[i].append(group_offsets(rgb, specs))

    for k in tqdm(range(seeds), desc=engine.config.name, unit="seed"):
        images = diffusion_sample(
            engine.denoise,
            tokens,
            mask,
            null_tokens,
            null_mask,
            image_seeds(k, len(texts)),
            steps,
            engine.config.default_guidance,
            engine.config.num_train_timesteps,
            engine.config.max_steps,
            engine.config.guidance_rescale,
            on_step=on_step,
            # step i of DDIM at the engine's steps, whatever the engine samples with by default:
            # the committed docs/relation_probe.md was measured so
            sampler="ddim",
        )
        relation.append(score_images(images, specs)[:, ASPECTS.index("relation")])
    return {
        "steps": steps,
        "guidance": engine.config.default_guidance,
        "offsets": {str(i + 1): _summary(np.concatenate(found[i])) for i in wanted},
        "final_relation_aspect": round(float(np.mean(relation)), 4),
    }


ATTENTION_TIMESTEPS = (999, 800, 500, 200)


def attention_probe(
    engine: Engine, pairs: Sequence[tuple[str, SceneSpec]], timesteps: Sequence[int]
) -> dict:
    """Per timestep: the grounding loss over all cross-attention layers, and the offset (px,
    +- s.e.) of the second group's words' attention centroid from the first's along the
    relation's axis (positive: the prompted side), averaged over the full-resolution layers;
    each prompt's render (seed as the first image of the probe) noised with a seeded draw."""
    texts, specs = [t for t, _ in pairs], [s for _, s in pairs]
    model = copy.deepcopy(engine.denoise)  # the engine keeps its own attention processors
    maps = AttentionMaps(model.unet)
    tokens, mask = (torch.from_numpy(a) for a in engine.encoder.encode(texts))
    words = torch.from_numpy(
        group_token_masks(engine.encoder.tokenizer, texts, specs, tokens.shape[1])
    )
    rendered = [render_with_masks(s, seed) for s, seed in zip(specs, image_seeds(0, len(specs)))]
    clean = np.stack([im for im, _ in rendered]).transpose(0, 3, 1, 2)
    clean = torch.from_numpy(clean.astype(np.float32) / 127.5 - 1.0)
    pixels = torch.from_numpy(np.stack([m for _, m in rendered]))
    scheduler = make_scheduler(engine.config.num_train_timesteps, kind="ddpm")
    ys, xs = (torch.from_numpy(a) for a in np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32))
    axes = torch.tensor([RELATION_AXES[s.relation][0] for s in specs])
    signs = torch.tensor([float(RELATION_AXES[s.relation][1]) for s in specs])
    out = {}
    for t in timesteps:
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(t))
        at = torch.full((len(specs),), t)
        with torch.no_grad(), maps:
            model(scheduler.add_noise(clean, noise, at), at, tokens, mask)
        offsets = []
        for a in maps.maps:
            if a.shape[1] != IMAGE_SIZE * IMAGE_SIZE:
                continue
            attention = torch.einsum("bpl,bgl->bgp", a, words.to(a.dtype))
            attention = attention / attention.sum(-1, keepdim=True).clamp(min=1e-12)
            centroid = torch.stack(
                [(attention * xs.flatten()).sum(-1), (attention * ys.flatten()).sum(-1)], -1
            )  # (B, G, 2)
            delta = centroid[:, 1] - centroid[:, 0]
            offsets.append(signs * delta.gather(1, axes[:, None])[:, 0])
        along = torch.stack(offsets).mean(0).numpy()
        loss = grounding_loss(maps.maps, words, pixels)
        out[str(t)] = {
            "attention_along": round(float(along.mean()), 3),
            "attention_along_se": round(float(along.std(ddof=1) / np.sqrt(len(along))), 3),
            "grounding_loss": round(float(loss), 4),
        }
    return out


def token_similarity(encoder: TextEncoder, specs: Sequence[SceneSpec]) -> dict:
    """How much MiniLM's token embeddings say about a group's role in a relation.

    Mean cosine similarity of the first group's color token as the subject ("a red circle left
    of a blue square") and as the object ("a blue square left of a red circle": the groups
    swapped), and of the same token under the opposite relation ("... right of ..."); canonical
    prompt texts. Near 1: the cross-attention must read the role from a small remainder.
    """
    first = [s.to_text() for s in specs]
    swapped = [replace(s, groups=s.groups[::-1]).to_text() for s in specs]
    opposite = [opposite_relation(s).to_text() for s in specs]
    embedded = [encoder.encode(texts)[0] for texts in (first, swapped, opposite)]
    role, relation = [], []
    for n, spec in enumerate(specs):
        color = spec.groups[0].color
        where = [
            encoder.tokenizer.convert_ids_to_tokens(encoder.tokenizer(t)["input_ids"]).index(color)
            for t in (first[n], swapped[n], opposite[n])
        ]
        vectors = [e[n, i] for e, i in zip(embedded, where, strict=True)]
        role.append(_cosine(vectors[0], vectors[1]))
        relation.append(_cosine(vectors[0], vectors[2]))
    return {
        "subject_vs_object": round(float(np.mean(role)), 4),
        "relation_vs_opposite": round(float(np.mean(relation)), 4),
    }


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def ground_truth(pairs: Sequence[tuple[str, SceneSpec]], seeds: int) -> dict:
    specs = [s for _, s in pairs]
    images = [
        np.stack(
            [render(s, seed) for s, seed in zip(specs, image_seeds(k, len(specs)), strict=True)]
        )
        for k in range(seeds)
    ]
    offsets = np.concatenate([group_offsets(im.astype(np.float64), specs) for im in images])
    relation = np.mean([score_images(im, specs)[:, ASPECTS.index("relation")] for im in images])
    return {
        "offsets": {"final": _summary(offsets)},
        "final_relation_aspect": round(float(relation), 4),
    }


def relation_worth(specs: Sequence[SceneSpec], layouts: int = 100) -> dict:
    """What knowing the relation is worth to a denoiser at t = 999, from renders alone.

    There the input is pure noise, and the best a v-prediction UNet can do is predict the mean
    image of the prompt's layouts. Per prompt: the mean of ``layouts`` renders, and the mean
    over both relations (the prompt's and its opposite's, ``layouts`` each), scored by their
    mean squared error (images in [-1, 1]) on ``layouts`` further renders of the prompt; and
    the offset between the groups' colors in the prompt's mean image.
    """

    def renders(spec: SceneSpec, first: int) -> np.ndarray:
        return np.stack([render(spec, first + i) for i in range(layouts)]) / 127.5 - 1.0

    given, without, offsets = [], [], []
    for spec in specs:
        mean = renders(spec, 0).mean(0)
        both = (mean + renders(opposite_relation(spec), layouts).mean(0)) / 2
        test = renders(spec, 2 * layouts)
        given.append(((test - mean) ** 2).mean())
        without.append(((test - both) ** 2).mean())
        offsets.append(group_offsets(((mean + 1.0) * 127.5)[None], [spec])[0, 0])
    given_mse, without_mse = float(np.mean(given)), float(np.mean(without))
    return {
        "layouts": layouts,
        "x0_mse_given_relation": round(given_mse, 4),
        "x0_mse_without_relation": round(without_mse, 4),
        "gain_share": round(1.0 - given_mse / without_mse, 4),
        "mean_image_along": round(float(np.mean(offsets)), 3),
        "mean_image_along_se": round(float(np.std(offsets, ddof=1) / np.sqrt(len(offsets))), 3),
    }


def _summary(offsets: np.ndarray) -> dict:
    return {
        "along": round(float(offsets[:, 0].mean()), 3),
        "along_se": round(float(offsets[:, 0].std(ddof=1) / np.sqrt(len(offsets))), 3),
        "share_along_positive": round(float((offsets[:, 0] > 0).mean()), 3),
        "across": round(float(offsets[:, 1].mean()), 3),
    }


def markdown(result: dict) -> str:
    lines = [
        "# Relation probe",
        "",
        f"{result['n_prompts']} tuning relation prompts (two colors) x {result['seeds']} seeds. "
        f"Regenerate: `{result['command']}`.",
        "",
        "Offset of the second group's color centroid from the first's along the relation's "
        "axis, in pixels (positive: where the prompt puts it; +- standard error), in the "
        "predicted final image after the given DDIM step; and the final images' relation aspect.",
        "",
        "| engine | after step: along offset (px) | relation aspect |",
        "|---|---|---|",
    ]
    for name, r in result["engines"].items():
        cells = ", ".join(
            f"{step}: {o['along']:+.2f} +- {o['along_se']:.2f}" for step, o in r["offsets"].items()
        )
        lines.append(f"| {name} | {cells} | {r['final_relation_aspect']:.3f} |")
    attention = {n: r["attention"] for n, r in result["engines"].items() if "attention" in r}
    if attention:
        steps = list(next(iter(attention.values())))
        lines += [
            "",
            "Inside the UNet (cross-attention engines): each prompt's ground-truth render noised "
            "to timestep t and denoised once; the offset between the attention centroids of the "
            "two groups' color and shape words along the relation's axis (px, mean of the "
            "full-resolution layers; positive: the prompted side) / the grounding loss. At "
            "t = 999 only the prompt can put the groups apart.",
            "",
            "| engine | " + " | ".join(f"t = {t}" for t in steps) + " |",
            "|---|" + "---|" * len(steps),
        ]
        for name, r in attention.items():
            cells = " | ".join(
                f"{r[t]['attention_along']:+.2f} +- {r[t]['attention_along_se']:.2f} / "
                f"{r[t]['grounding_loss']:.3f}"
                for t in steps
            )
            lines.append(f"| {name} | {cells} |")
    worth = result["relation_worth"]
    lines += [
        "",
        "What the relation is worth at t = 999, where a UNet sees pure noise and can do no "
        "better than predict the mean image of the prompt's layouts (ground-truth renders, "
        f"{worth['layouts']} layouts per mean): that mean image puts the groups "
        f"{worth['mean_image_along']:+.2f} +- {worth['mean_image_along_se']:.2f} px apart, and "
        "predicting it rather than the mean over both relations lowers the final image's "
        f"squared error by {100 * worth['gain_share']:.1f}% "
        f"({worth['x0_mse_given_relation']:.4f} against {worth['x0_mse_without_relation']:.4f}, "
        "on further layouts).",
    ]
    sim = result["token_similarity"]
    lines += [
        "",
        "MiniLM token embeddings (canonical texts of the same prompts): the first group's color "
        "token as the relation's subject against as its object (groups swapped), mean cosine "
        f"{sim['subject_vs_object']:.3f}; against the opposite relation, "
        f"{sim['relation_vs_opposite']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--engine",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="an engine's weights directory, under a name for the table (repeatable)",
    )
    ap.add_argument("--n", type=int, default=400, help="tuning prompts drawn (default 400)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--at", type=int, nargs="+", default=[0, 4, 10, -1], help="0-based steps")
    ap.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--docs-dir", default=str(ROOT / "docs"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = {}
    for item in args.engine:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"--engine {item!r}: expected NAME=DIR")
        engines[name] = Path(path)
    pairs = relation_pairs(args.n)
    if not pairs:
        ap.error(f"--n {args.n}: no relation prompt with two colors among the tuning prompts")
    result = {
        "command": "benchmarks/relation_probe.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_prompts": len(pairs),
        "seeds": args.seeds,
        "engines": {"ground truth": ground_truth(pairs, args.seeds)},
        "relation_worth": relation_worth([s for _, s in pairs]),
    }
    encoder = TextEncoder()
    result["token_similarity"] = token_similarity(encoder, [s for _, s in pairs])
    for name, path in engines.items():
        engine = Engine.load(path, encoder)
        attention = None
        if engine.config.unet.conditioning != "pooled":
            attention = attention_probe(engine, pairs, ATTENTION_TIMESTEPS)
        if args.runtime == "onnxruntime":
            engine = onnx_engine(engine, Path(args.results_dir) / f"onnx_{name}")
        result["engines"][name] = probe_engine(engine, pairs, args.seeds, args.at)
        if attention is not None:
            result["engines"][name]["attention"] = attention
        log.info("%s: %s", name, result["engines"][name])
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.results_dir) / "relation_probe.json").write_text(json.dumps(result, indent=1))
    Path(args.docs_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.docs_dir) / "relation_probe.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    main()
