"""The training data: a fixed prompt pool, each step's batch drawn and rendered on the CPU.

Prompts come from a fixed pool (encoded once and cached), each drawn with a fresh random layout,
so no two training images repeat. Every random draw of step ``s`` (prompts, layouts, text
dropout, noise, timesteps) comes from a generator seeded by ``(data_seed, s)`` and is made in
NumPy, so a step's batch is the same whatever the device, the number of render workers, or where
a run was resumed.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2i_router.engines.grounding import (
    MAX_GROUPS,
)
from t2i_router.engines.mix import pool_probabilities
from t2i_router.engines.recipe import TrainConfig
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.world import sample_prompts
from t2i_router.world.renderer import render_with_masks

log = logging.getLogger(__name__)


def prompt_pool(cfg: TrainConfig, encoder: TextEncoder, cache_dir: Path | None):
    """The training prompts, their specs, and their encodings (float16, cached on disk)."""
    pairs = sample_prompts(cfg.prompt_pool, seed=cfg.data_seed)
    texts = [t for t, _ in pairs]
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"prompt_pool_seed{cfg.data_seed}_n{cfg.prompt_pool}.npz"
        if cache.exists():
            data = np.load(cache)
            if list(data["texts"]) == texts:
                return pairs, data["tokens"], data["mask"]
    log.info("encoding %d training prompts (cached after the first run)", len(texts))
    tokens, mask = encoder.encode(texts)
    tokens = tokens.astype(np.float16)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, texts=np.array(texts), tokens=tokens, mask=mask)
    return pairs, tokens, mask


@dataclass(frozen=True)
class Batch:
    """One training step's data, all drawn on the CPU in NumPy (picklable across processes)."""

    images: np.ndarray  # (B, 3, 32, 32) float32 in [-1, 1]
    pool_index: np.ndarray  # (B,) rows of the prompt pool
    drop: np.ndarray  # (B,) bool: the prompt replaced by the empty prompt
    noise: np.ndarray  # (B, 3, 32, 32) float32
    timesteps: np.ndarray  # (B,) int64
    masks: np.ndarray  # (B, MAX_GROUPS, 32, 32) bool: each group's pixels (for grounding)


def draw_batch(
    pairs: Sequence[tuple[str, object]],
    cfg: TrainConfig,
    num_train_timesteps: int,
    step: int,
    probabilities: np.ndarray | None = None,
) -> Batch:
    """The batch of training step ``step``: a pure function of its arguments.

    ``probabilities`` are ``mix.pool_probabilities(pairs, cfg.level_weights, cfg.concept_shares)``
    when the caller has them (computed once per run); without them they are computed here.
    """
    rng = np.random.default_rng([cfg.data_seed, step])
    b = cfg.batch_size
    if cfg.level_weights is None and cfg.concept_shares is None:
        idx = rng.integers(len(pairs), size=b)
    else:
        if probabilities is None:
            probabilities = pool_probabilities(pairs, cfg.level_weights, cfg.concept_shares)
        idx = rng.choice(len(pairs), size=b, p=probabilities)
    layout_seeds = rng.integers(2**62, size=b)
    drop = rng.random(b) < cfg.text_dropout
    noise = rng.standard_normal((b, 3, 32, 32), dtype=np.float32)
    timesteps = rng.integers(0, num_train_timesteps, size=b)
    if cfg.high_noise_share > 0:
        # Drawn after everything else, so that a share of 0 leaves every other draw as it was.
        high = rng.random(b) < cfg.high_noise_share
        timesteps[high] = rng.integers(cfg.high_noise_from, num_train_timesteps, size=high.sum())
    images = np.empty((b, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((b, MAX_GROUPS, 32, 32), dtype=bool)
    for k, (i, s) in enumerate(zip(idx, layout_seeds, strict=True)):
        image, groups = render_with_masks(pairs[i][1], int(s))
        images[k], masks[k, : len(groups)] = image, groups
    return Batch(
        images=np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0,
        pool_index=idx,
        drop=drop,
        noise=noise,
        timesteps=timesteps,
        masks=masks,
    )


def _render_worker(
    pairs, cfg: TrainConfig, num_train_timesteps: int, probabilities, steps, batches
) -> None:
    """A render process: draws the batch of each step it is sent until it is sent None.

    The pool's specs come as arguments of the forked process (one copy per worker, never
    pickled per batch); a failure is sent back as the step's result for the consumer to raise.
    """
    for step in iter(steps.get, None):
        try:
            result: Batch | BaseException = draw_batch(
                pairs, cfg, num_train_timesteps, step, probabilities
            )
        except BaseException as e:
            result = e
        batches.put((step, result))


def batch_stream(
    pairs: Sequence[tuple[str, object]],
    cfg: TrainConfig,
    num_train_timesteps: int,
    first_step: int,
    probabilities: np.ndarray | None = None,
) -> Iterator[Batch]:
    """Batches of steps ``first_step, first_step + 1, ...``, rendered ahead by ``cfg.data_workers``.

    Workers only run NumPy (no torch), so forking them from a process with torch threads is safe;
    at most two batches per worker are in flight. Closing the stream (or leaving the loop that
    drives it) terminates the workers.
    """
    if cfg.data_workers == 0:
        step = first_step
        while True:
            yield draw_batch(pairs, cfg, num_train_timesteps, step, probabilities)
            step += 1
    ctx = multiprocessing.get_context("fork")
    steps, batches = ctx.Queue(), ctx.Queue()
    args = (pairs, cfg, num_train_timesteps, probabilities, steps, batches)
    workers = [
        ctx.Process(target=_render_worker, args=args, daemon=True) for _ in range(cfg.data_workers)
    ]
    for worker in workers:
        worker.start()
    try:
        ahead = 2 * cfg.data_workers
        for k in range(ahead):
            steps.put(first_step + k)
        done: dict[int, Batch | BaseException] = {}  # results that came back early
        step = first_step
        while True:
            while step not in done:
                finished, result = batches.get()
                done[finished] = result
            result = done.pop(step)
            if isinstance(result, BaseException):
                raise result
            steps.put(step + ahead)
            step += 1
            yield result
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join()
