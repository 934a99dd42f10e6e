# Over 400 lines on purpose: the label format's writer and reader, side by side so they agree.
"""Quality labels: every choice's images for a split's prompts, scored by the world's metrics.

``t2i-router label --split test --prompts 600 --seeds 8 --out data/labels`` writes::

    data/labels/test/dataset.json                       the manifest (see :class:`Manifest`)
    data/labels/test/<choice>/part-00000.parquet        prompts [0, chunk) x seeds, one choice
    data/labels/test/<choice>/part-00001.parquet        prompts [chunk, 2 chunk) ...

One row per (prompt, choice, seed): the prompt, its canonical spec, complexity, the seed, the
quality vector (one column per aspect of :data:`~t2i_router.world.ASPECTS`, NaN where an aspect
does not apply) and the weights SHA-256 of the engine that drew it. Every choice of a prompt
draws its k-th image from the same seed, so choices are compared on the same noise.

Splits are made by scene, not by wording: a prompt's split is a hash of its canonical spec, so
two phrasings of one scene never land in different splits. No split holds a prompt text the
engines trained on, tuned on or are reported on. Within a split, prompts interleave the
complexity levels (single, group, pair, relation, single, ...), so the first ``n`` prompts of a
split are the same for any larger ``n``: a run grows by whole chunks, and each part file is
written atomically, so a killed run resumes (``--resume``) at the first missing part. A part
drawn by other weights than the engine's current ones is stale and is drawn again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from t2i_router.errors import (
    ConfigError,
    FailedPrecondition,
    InternalError,
    InvalidRequest,
    MissingFileError,
)
from t2i_router.estimator.choices import DEFAULT_CHOICES, Choice
from t2i_router.world import (
    ALIGNMENT_ASPECTS,
    ASPECTS,
    COMPLEXITY_LEVELS,
    mean_alignment,
    parse_prompt,
)
from t2i_router.world.sampler import sample_prompts
from t2i_router.world.spec import SceneSpec

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "LabelSet",
    "Manifest",
    "label_split",
    "load_labels",
    "split_of",
    "split_prompts",
]

FORMAT_VERSION = 1
Split = Literal["train", "val", "test"]
# Share of scenes in each split, by the hash of the canonical spec.
SPLITS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.8),
    "val": (0.8, 0.9),
    "test": (0.9, 1.0),
}
# Sampler seed of label prompts (level i samples with LABEL_SEED + i): engine training uses
# 1000, the engines report 999_000, tuning 998_000.
LABEL_SEED = 997_000
# Image seeds: SEED_BASE[split] + k * 1_000_003 + prompt index, the same for every choice.
SEED_BASE = {"train": 0, "val": 100_000_000, "test": 200_000_000}
MANIFEST_FILE = "dataset.json"
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


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidRequest(f"split {split!r} is not one of {sorted(SPLITS)}")


def split_prompts(
    split: str, n: int, exclude: set[str] | frozenset[str] | None = None
) -> list[tuple[str, SceneSpec]]:
    """The first ``n`` (text, spec) pairs of ``split``, levels interleaved, texts unique.

    ``exclude`` defaults to :func:`engine_prompt_texts`.
    """
    _check_split(split)
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


@dataclass(frozen=True)
class Manifest:
    """What a split's folder holds; rewritten after every part.

    Attributes:
        split: "train", "val" or "test".
        prompts: Prompts labelled so far asked for (the split's first ``prompts``).
        seeds: Images per prompt and choice.
        chunk: Prompts per part file.
        choices: Choice names labelled, in the order asked.
        engines: Engine name -> weights SHA-256 of the current parts.
        format_version: Layout version of the folder.
    """

    split: str
    prompts: int
    seeds: int
    chunk: int
    choices: tuple[str, ...]
    engines: dict[str, str]
    format_version: int = FORMAT_VERSION

    @property
    def data_version(self) -> str:
        """A short hash of what the labels are: split, prompts, seeds, choices and weights."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def write(self, folder: Path) -> None:
        _atomic_write(
            folder / MANIFEST_FILE, (json.dumps(self.to_dict(), indent=2) + "\n").encode()
        )

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["choices"] = list(self.choices)
        out["data_version"] = self.data_version
        return out

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise MissingFileError(
                f"no label manifest at {path}: run `t2i-router label` first"
            ) from e
        raw.pop("data_version", None)
        if raw.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"{path} has format_version {raw.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}"
            )
        raw["choices"] = tuple(raw["choices"])
        return cls(**raw)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def part_path(folder: Path, choice: Choice, index: int) -> Path:
    return folder / choice.name / f"part-{index:05d}.parquet"


def _part_sha(path: Path) -> str | None:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    value = meta.get(b"engine_sha256")
    return value.decode() if value else None


def _part_table(
    pairs: Sequence[tuple[str, SceneSpec]],
    first_id: int,
    choice: Choice,
    seeds: np.ndarray,
    scores: np.ndarray,
    sha: str,
    split: str,
):
    """One part as a pyarrow Table: rows are prompt-major, seed-minor."""
    import pyarrow as pa

    n, s = seeds.shape
    ids = np.repeat(np.arange(first_id, first_id + n), s)
    columns = {
        "prompt_id": pa.array(ids, pa.int32()),
        "prompt": pa.array(np.repeat([t for t, _ in pairs], s).tolist(), pa.string()),
        "spec": pa.array(np.repeat([p.to_text() for _, p in pairs], s).tolist(), pa.string()),
        "complexity": pa.array(np.repeat([p.complexity for _, p in pairs], s).tolist()),
        "choice": pa.array([choice.name] * (n * s), pa.string()),
        "engine": pa.array([choice.engine] * (n * s), pa.string()),
        "steps": pa.array(np.full(n * s, choice.steps), pa.int16()),
        "seed_index": pa.array(np.tile(np.arange(s), n), pa.int16()),
        "seed": pa.array(seeds.ravel(), pa.int64()),
    }
    for k, aspect in enumerate(ASPECTS):
        columns[f"q_{aspect}"] = pa.array(scores[:, k].astype(np.float32), pa.float32())
    columns["alignment"] = pa.array(mean_alignment(scores).astype(np.float32), pa.float32())
    meta = {
        "format_version": str(FORMAT_VERSION),
        "split": split,
        "choice": choice.name,
        "engine_sha256": sha,
    }
    return pa.table(columns).replace_schema_metadata(meta)


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

    _check_split(split)
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


def _write_parquet(table, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    _atomic_write(path, sink.getvalue().to_pybytes())


@dataclass(frozen=True)
class LabelSet:
    """A split's labels as arrays, for the prompts labelled by every choice asked for.

    Attributes:
        prompts: (N,) prompt texts.
        specs: (N,) canonical spec texts (``parse_prompt`` gives the SceneSpec back).
        levels: (N,) complexity level names.
        choices: The M choices, in the order asked for.
        seeds: (N, S) image seeds.
        quality: (N, M, S, K) float32, K = len(ASPECTS); NaN where an aspect does not apply.
        data_version: The manifest's :attr:`Manifest.data_version`.
    """

    prompts: np.ndarray
    specs: np.ndarray
    levels: np.ndarray
    choices: tuple[Choice, ...]
    seeds: np.ndarray
    quality: np.ndarray
    data_version: str

    @property
    def alignment(self) -> np.ndarray:
        """(N, M, S) mean alignment of each image."""
        return mean_alignment(self.quality)

    @property
    def quality_filled(self) -> np.ndarray:
        """:attr:`quality` with each inapplicable alignment aspect (the relation of a prompt
        without one) set to the image's alignment over the aspects that apply.

        The equal-weight mean over all alignment aspects then *is* the image's alignment, so an
        estimator trained on these targets predicts utilities on one scale for every prompt, and
        never carries an unconstrained output into a utility.
        """
        q = self.quality.copy()
        n_align = len(ALIGNMENT_ASPECTS)
        align = q[..., :n_align]
        fill = np.broadcast_to(mean_alignment(q)[..., None], align.shape)
        align[np.isnan(align)] = fill[np.isnan(align)]
        return q

    def scene_specs(self) -> list[SceneSpec]:
        return [parse_prompt(s) for s in self.specs]


def _iter_parts(folder: Path, choice: Choice) -> Iterator[Path]:
    yield from sorted((folder / choice.name).glob("part-*.parquet"))


def load_labels(
    out_dir: str | Path, split: str, choices: Sequence[Choice | str] | None = None
) -> LabelSet:
    """Read a split's labels (all of the manifest's choices unless ``choices`` names some).

    Prompts missing any asked choice are left out, so a run still in progress loads whole
    prompts only.
    """
    import pyarrow.parquet as pq

    _check_split(split)
    folder = Path(out_dir) / split
    manifest = Manifest.read(folder)
    names = [c if isinstance(c, str) else c.name for c in (choices or manifest.choices)]
    missing = sorted(set(names) - set(manifest.choices))
    if missing:
        raise InvalidRequest(f"{folder} has no labels for {missing}; it has {manifest.choices}")
    chosen = tuple(Choice.parse(n) for n in names)
    per_choice = []
    for choice in chosen:
        tables = [pq.read_table(p) for p in _iter_parts(folder, choice)]
        per_choice.append(
            {
                k: np.concatenate([t[k].to_numpy() for t in tables])
                for k in (
                    "prompt_id",
                    "prompt",
                    "spec",
                    "complexity",
                    "seed",
                    "seed_index",
                    *(f"q_{a}" for a in ASPECTS),
                )
            }
            if tables
            else None
        )
    if any(c is None for c in per_choice):
        empty = [c.name for c, t in zip(chosen, per_choice, strict=True) if t is None]
        raise FailedPrecondition(f"{folder} has no parts yet for {empty}")
    common = set.intersection(*(set(t["prompt_id"].tolist()) for t in per_choice))
    ids = np.array(sorted(common), dtype=np.int64)
    s = manifest.seeds
    quality = np.empty((len(ids), len(chosen), s, len(ASPECTS)), np.float32)
    first = None
    for m, table in enumerate(per_choice):
        order = np.lexsort((table["seed_index"], table["prompt_id"]))
        keep = order[np.isin(table["prompt_id"][order], ids)]
        rows = {k: v[keep] for k, v in table.items()}
        q = np.stack([rows[f"q_{a}"] for a in ASPECTS], axis=-1)
        quality[:, m] = q.reshape(len(ids), s, len(ASPECTS))
        if first is None:
            first = rows
    assert first is not None
    return LabelSet(
        prompts=first["prompt"][::s].astype(str),
        specs=first["spec"][::s].astype(str),
        levels=first["complexity"][::s].astype(str),
        choices=chosen,
        seeds=first["seed"].reshape(len(ids), s),
        quality=quality,
        data_version=manifest.data_version,
    )
