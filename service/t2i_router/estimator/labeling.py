"""Drawing labels: which prompts a split holds, and every choice's images for them, scored.

``t2i-router label`` calls :func:`label_split`; the folder it writes is described (and read) by
:mod:`t2i_router.estimator.labels`.

Splits are made by scene, not by wording: a prompt's split is a hash of its canonical spec, so
two phrasings of one scene never land in different splits. No split holds a prompt text the
engines trained on, tuned on or are reported on. Within a split, prompts interleave the
complexity levels (single, group, pair, relation, single, ...), so the first ``n`` prompts of a
split are the same for any larger ``n``: a run grows by whole chunks, and each part file is
written atomically, so a killed run resumes (``--resume``) at the first missing part. A part
drawn by other weights than the engine's current ones is stale and is drawn again. Every choice
of a prompt draws its k-th image from the same seed, so choices are compared on the same noise.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from t2i_router.errors import InternalError, InvalidRequest
from t2i_router.estimator.choices import DEFAULT_CHOICES, Choice
from t2i_router.estimator.labels import (
    MANIFEST_FILE,
    SPLITS,
    Manifest,
    _part_sha,
    _part_table,
    _write_parquet,
    check_split,
    part_path,
)
from t2i_router.world import COMPLEXITY_LEVELS
from t2i_router.world.sampler import sample_prompts
from t2i_router.world.spec import SceneSpec

log = logging.getLogger(__name__)

__all__ = [
    "engine_prompt_texts",
    "image_seeds",
    "label_split",
    "split_of",
    "split_prompts",
    "weights_sha256",
]

# Sampler seed of label prompts (level i samples with LABEL_SEED + i): engine training uses
# 1000, the engines report 999_000, tuning 998_000.
LABEL_SEED = 997_000
# Image seeds: SEED_BASE[split] + k * 1_000_003 + prompt index, the same for every choice.
SEED_BASE = {"train": 0, "val": 100_000_000, "test": 200_000_000}

EXCLUDE_UP_TO = 2000  # report and tuning prompts excluded up to this n (both are prefix-stable)


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def split_of(spec: SceneSpec) -> str:
    """The split a scene belongs to (whatever its wording)."""
    u = _unit_hash(spec.to_text())
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= u < hi)


@functools.cache
def engine_prompt_texts() -> frozenset[str]:
    """Prompt texts the engines trained on, were tuned on, or are reported on."""
    from t2i_router.engines.prompts import held_out_prompts, training_texts, tuning_prompts

    seen = training_texts()
    report = {t for t, _ in held_out_prompts(EXCLUDE_UP_TO, exclude=seen)}
    tuning = {t for t, _ in tuning_prompts(EXCLUDE_UP_TO)}
    return frozenset(seen | report | tuning)


def split_prompts(
    split: str, n: int, exclude: set[str] | frozenset[str] | None = None
) -> list[tuple[str, SceneSpec]]:
    """The first ``n`` (text, spec) pairs of ``split``, levels interleaved, texts unique.

    ``exclude`` defaults to :func:`engine_prompt_texts`.
    """
    check_split(split)
    if n < 0:
        raise InvalidRequest(f"n is {n}, must be >= 0")
    exclude = engine_prompt_texts() if exclude is None else exclude
    per_level = -(-n // len(COMPLEXITY_LEVELS))
    columns = []
    for i, level in enumerate(COMPLEXITY_LEVELS):
        pool, fresh = 4 * per_level + 64, []
        while len(fresh) < per_level:
            # The sampler draws in sequence, so a larger pool extends the smaller one.
            fresh, seen = [], set()
            for text, spec in sample_prompts(pool, seed=LABEL_SEED + i, complexity=level):
                if text in exclude or text in seen or split_of(spec) != split:
                    continue
                seen.add(text)
                fresh.append((text, spec))
                if len(fresh) == per_level:
                    break
            if pool > 64 * per_level + 10_000:
                raise InternalError(
                    f"only {len(fresh)} {level} prompts for {split}, need {per_level}"
                )
            pool *= 2
        columns.append(fresh)
    interleaved = [col[j] for j in range(per_level) for col in columns]
    return interleaved[:n]


def weights_sha256(engine_dir: str | Path) -> str:
    """SHA-256 of an engine's weights file: the engine version a label was drawn with."""
    from t2i_router.engines.engine import WEIGHTS_FILE

    digest = hashlib.sha256()
    with open(Path(engine_dir) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_seeds(split: str, prompt_ids: np.ndarray, seeds: int) -> np.ndarray:
    """(N, seeds) image seeds of the given prompts: the same for every choice."""
    k = np.arange(seeds, dtype=np.int64)
    return SEED_BASE[split] + k[None, :] * 1_000_003 + np.asarray(prompt_ids, np.int64)[:, None]


def label_split(
    out_dir: str | Path,
    split: str,
    prompts: int,
    seeds: int,
    choices: Sequence[Choice] = DEFAULT_CHOICES,
    resume: bool = False,
    chunk: int = 100,
    models_dir: str | Path = "models",
    runtime: Literal["onnxruntime", "torch"] = "onnxruntime",
    batch_size: int = 64,
    progress: bool = True,
) -> Manifest:
    """Draw and score every missing or stale part of ``split``; returns the manifest.

    Images come from the engines in-process (ONNX Runtime by default: the kernels Triton runs on
    the CPU; ``tests/integration`` checks that Triton serves the same images).

    Raises:
        InvalidRequest: a bad split, count or choice, or an existing folder without ``resume``
            or with other seeds or chunk size.
    """
    from tqdm import tqdm

    check_split(split)
    for name, value in (("prompts", prompts), ("seeds", seeds), ("chunk", chunk)):
        if value < 1:
            raise InvalidRequest(f"{name} is {value}, must be >= 1")
    choices = tuple(choices)
    folder = Path(out_dir) / split
    if (folder / MANIFEST_FILE).exists():
        old = Manifest.read(folder)
        if not resume:
            raise InvalidRequest(
                f"{folder} already holds labels ({old.prompts} prompts); pass --resume to continue"
                " or extend it, or choose another --out"
            )
        if (old.seeds, old.chunk) != (seeds, chunk):
            raise InvalidRequest(
                f"{folder} was labelled with --seeds {old.seeds} --chunk {old.chunk}; got --seeds"
                f" {seeds} --chunk {chunk}"
            )
        choices = tuple(dict.fromkeys([*map(Choice.parse, old.choices), *choices]))
        prompts = max(prompts, old.prompts)
    shas = {c.engine: weights_sha256(Path(models_dir) / c.engine) for c in choices}
    pairs = split_prompts(split, prompts)
    n_chunks = -(-prompts // chunk)
    todo = []
    for index in range(n_chunks):
        for choice in choices:
            path = part_path(folder, choice, index)
            if path.exists():
                if _part_sha(path) == shas[choice.engine]:
                    continue
                log.info("%s was drawn by other %s weights: drawing it again", path, choice.engine)
            todo.append((index, choice))
    manifest = Manifest(split, prompts, seeds, chunk, tuple(c.name for c in choices), shas)
    manifest.write(folder)
    if not todo:
        return manifest
    engines = _load_engines({c.engine for _, c in todo}, models_dir, runtime)
    total = sum(min(chunk, prompts - i * chunk) * seeds for i, _ in todo)
    with tqdm(total=total, unit="img", desc=f"label {split}", disable=not progress) as bar:
        for index, choice in todo:
            lo, hi = index * chunk, min(prompts, (index + 1) * chunk)
            part = pairs[lo:hi]
            grid = image_seeds(split, np.arange(lo, hi), seeds)  # (n, S)
            texts = [t for t, _ in part for _ in range(seeds)]
            specs = [p for _, p in part for _ in range(seeds)]
            bar.set_postfix_str(f"{choice.name} part {index}")
            images = _generate(engines[choice.engine], texts, grid.ravel(), choice, batch_size, bar)
            from t2i_router.world import score_images

            scores = score_images(images, specs)
            table = _part_table(part, lo, choice, grid, scores, shas[choice.engine], split)
            _write_parquet(table, part_path(folder, choice, index))
    return manifest


def _generate(engine, texts, seeds, choice: Choice, batch_size: int, bar) -> np.ndarray:
    out = []
    for start in range(0, len(texts), batch_size):
        stop = start + batch_size
        out.append(
            engine.generate(texts[start:stop], seeds[start:stop].tolist(), steps=choice.steps)
        )
        bar.update(len(out[-1]))
    return np.concatenate(out)


def _load_engines(names: set[str], models_dir: str | Path, runtime: str) -> dict:
    from t2i_router.engines import Engine, TextEncoder
    from t2i_router.engines.export import OnnxDenoiser, export_onnx

    if runtime not in ("onnxruntime", "torch"):
        raise InvalidRequest(f"runtime {runtime!r} is not 'onnxruntime' or 'torch'")
    encoder = TextEncoder()
    engines = {}
    workdir = Path(tempfile.mkdtemp(prefix="t2i-label-"))
    for name in sorted(names):
        engine = Engine.load(Path(models_dir) / name, encoder)
        if runtime == "onnxruntime":
            path = export_onnx(engine.denoise, workdir / f"{name}.onnx")
            # Labeling shares the host with other work: idle ORT workers must not spin.
            engine = Engine(engine.config, OnnxDenoiser(path, spinning=False), encoder)
        engines[name] = engine
    return engines
