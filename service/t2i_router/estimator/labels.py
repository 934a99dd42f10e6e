"""Quality labels on disk: the layout ``t2i-router label`` writes, and reading it back.

``t2i-router label --split test --prompts 600 --seeds 8 --out data/labels`` writes::

    data/labels/test/dataset.json                       the manifest (see :class:`Manifest`)
    data/labels/test/<choice>/part-00000.parquet        prompts [0, chunk) x seeds, one choice
    data/labels/test/<choice>/part-00001.parquet        prompts [chunk, 2 chunk) ...

One row per (prompt, choice, seed): the prompt, its canonical spec, complexity, the seed, the
quality vector (one column per aspect of :data:`~t2i_router.world.ASPECTS`, NaN where an aspect
does not apply) and the weights SHA-256 of the engine that drew it (also in the part's schema
metadata). How prompts are chosen and images drawn: :mod:`t2i_router.estimator.labeling`.
This module needs no engine: reading labels imports neither torch nor the engines.
"""

from __future__ import annotations

import dataclasses
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
    InvalidRequest,
    MissingFileError,
)
from t2i_router.estimator.choices import Choice
from t2i_router.world import ALIGNMENT_ASPECTS, ASPECTS, mean_alignment, parse_prompt
from t2i_router.world.spec import SceneSpec

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "LabelSet",
    "Manifest",
    "check_split",
    "load_labels",
    "part_path",
]

FORMAT_VERSION = 1
Split = Literal["train", "val", "test"]
# Share of scenes in each split, by the hash of the canonical spec.
SPLITS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.8),
    "val": (0.8, 0.9),
    "test": (0.9, 1.0),
}
MANIFEST_FILE = "dataset.json"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidRequest(f"split {split!r} is not one of {sorted(SPLITS)}")


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

    check_split(split)
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
