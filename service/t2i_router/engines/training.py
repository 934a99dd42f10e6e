"""Train an engine on scenes the world samples and renders on the fly.

Recipe (DESIGN, "Engines"): DDPM 1000 steps, cosine schedule, v-prediction, AdamW, linear
warm-up, gradient clipping, EMA weights, the prompt dropped to the empty prompt 10% of the time
so that classifier-free guidance works. Prompts come from a fixed pool (encoded once and cached),
each drawn with a fresh random layout, so no two training images repeat.

Every random draw of step ``s`` (prompts, layouts, text dropout, noise, timesteps) comes from a
generator seeded by ``(data_seed, s)`` and is made in NumPy on the CPU, so a step's batch is the
same whatever the device, the number of render workers, or where a run was resumed. A run
checkpoints every few minutes into ``train_state.pt`` (model, EMA, optimizer, schedule, learning
curve; tensors on the CPU) and resumes exactly from it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from t2i_router.engines.config import EngineConfig
from t2i_router.engines.engine import Engine, save_engine
from t2i_router.engines.grounding import (
    MAX_GROUPS,
    AttentionMaps,
    grounding_loss,
    group_token_masks,
)
from t2i_router.engines.sampler import make_scheduler
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.engines.unet import (
    CONV_IN_WEIGHT,
    Denoiser,
    UNetConfig,
    add_position_channels,
    pad_position_inputs,
)
from t2i_router.errors import FailedPrecondition
from t2i_router.world import COMPLEXITY_LEVELS, mean_alignment, sample_prompts, score_images
from t2i_router.world.renderer import render_with_masks

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


class TrainingError(FailedPrecondition, RuntimeError):
    """A run cannot start or resume.

    Settings that do not fit the engine, this host or the checkpoint (grounding on a pooled
    engine, CUDA where there is none), or a missing or mismatched checkpoint. Flag values out of
    range are rejected before, by the CLI's argument types.
    """


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings (defaults: the recipe that trained on this machine)."""

    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    # Final phase (off by default): from step ``lr_decay_from`` the learning rate follows a
    # cosine from ``lr`` down to ``lr * min_lr_factor`` over ``lr_decay_steps`` steps, then holds.
    lr_decay_from: int | None = None
    lr_decay_steps: int = 2000
    min_lr_factor: float = 0.1
    text_dropout: float = 0.1
    data_seed: int = 1000
    prompt_pool: int = 10_000
    # Relative chance of drawing a pool prompt of each complexity level (single, group, pair,
    # relation); None draws every pool prompt alike (the pool holds the levels in equal shares).
    level_weights: tuple[float, ...] | None = None
    # Weight of the grounding loss (engines.grounding: each group's color and shape words should
    # attend to the group's pixels); 0 trains on the denoising loss alone. Cross-attention only.
    grounding_weight: float = 0.0
    # Share of each batch whose timesteps are drawn from [high_noise_from, num_train_timesteps)
    # instead of from all timesteps: the high-noise steps, where sampling decides the layout
    # from pure noise (docs/engines.md, "Cloud: what the cloud would need at t = 999"). 0: uniform.
    high_noise_share: float = 0.0
    high_noise_from: int = 800
    checkpoint_every_s: float = 300.0
    eval_every_s: float = 900.0
    eval_prompts_per_level: int = 16
    eval_seed: int = 777_000  # never used for training data
    threads: int = 0  # 0 = torch's default
    device: str = "cpu"  # where the UNet trains ("cuda" on a GPU host); data stays on the CPU
    data_workers: int = 0  # processes rendering batches ahead (0: render in the training loop)

    def __post_init__(self) -> None:
        if self.level_weights is not None:
            weights = tuple(float(w) for w in self.level_weights)
            if len(weights) != len(COMPLEXITY_LEVELS) or min(weights) < 0 or sum(weights) <= 0:
                levels = ", ".join(COMPLEXITY_LEVELS)
                raise TrainingError(
                    f"level_weights is {list(self.level_weights)}: expected "
                    f"{len(COMPLEXITY_LEVELS)} non-negative weights ({levels}), not all zero"
                )
            object.__setattr__(self, "level_weights", weights)
        if not (math.isfinite(self.grounding_weight) and self.grounding_weight >= 0):
            raise TrainingError(f"grounding_weight is {self.grounding_weight}: expected >= 0")
        if not (0.0 <= self.high_noise_share <= 1.0):
            raise TrainingError(
                f"high_noise_share is {self.high_noise_share}: expected a share in [0, 1]"
            )
        if self.high_noise_from < 0:
            raise TrainingError(f"high_noise_from is {self.high_noise_from}: expected >= 0")


def _prompt_pool(cfg: TrainConfig, encoder: TextEncoder, cache_dir: Path | None):
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


# UNet features a trained checkpoint gains on resume without changing what it computes
# (position channels: two more input channels of conv_in, zero weights; token positions and the
# text transformer: new parameters, the UNet's last, at their initial values, which leave the
# function unchanged).
UPGRADES = ("position_channels", "token_positions", "text_transformer")


def _upgrades(theirs: dict, ours: dict) -> list[str]:
    """The features of :data:`UPGRADES` that turn UNet config ``theirs`` into ``ours`` (empty
    when ``ours`` is not ``theirs`` with some of them switched on)."""
    flags = [f for f in UPGRADES if ours.get(f) and not theirs.get(f)]
    if flags and {**theirs, **dict.fromkeys(flags, True)} == ours:
        return flags
    return []


# The engine fields a checkpoint's weights depend on; the sampling defaults (steps, guidance,
# rescale, max_steps) may change between runs (the current ones are saved with the weights).
_TRAINED_FIELDS = ("name", "unet", "num_train_timesteps")

# Settings that change how fast a run goes or how it is observed, not what it learns.
_RUN_ONLY = frozenset({"threads", "checkpoint_every_s", "eval_every_s", "device", "data_workers"})


@dataclass(frozen=True)
class Batch:
    """One training step's data, all drawn on the CPU in NumPy (picklable across processes)."""

    images: np.ndarray  # (B, 3, 32, 32) float32 in [-1, 1]
    pool_index: np.ndarray  # (B,) rows of the prompt pool
    drop: np.ndarray  # (B,) bool: the prompt replaced by the empty prompt
    noise: np.ndarray  # (B, 3, 32, 32) float32
    timesteps: np.ndarray  # (B,) int64
    masks: np.ndarray  # (B, MAX_GROUPS, 32, 32) bool: each group's pixels (for grounding)


def _pool_probabilities(pairs: Sequence[tuple[str, object]], weights: Sequence[float]):
    """Chance of drawing each pool prompt when its complexity level has weight ``weights[i]``."""
    levels = np.array([COMPLEXITY_LEVELS.index(spec.complexity) for _, spec in pairs])
    per_prompt = np.asarray(weights, dtype=np.float64)[levels]
    return per_prompt / per_prompt.sum()


def draw_batch(
    pairs: Sequence[tuple[str, object]], cfg: TrainConfig, num_train_timesteps: int, step: int
) -> Batch:
    """The batch of training step ``step``: a pure function of its arguments."""
    rng = np.random.default_rng([cfg.data_seed, step])
    b = cfg.batch_size
    if cfg.level_weights is None:
        idx = rng.integers(len(pairs), size=b)
    else:
        idx = rng.choice(len(pairs), size=b, p=_pool_probabilities(pairs, cfg.level_weights))
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


def _render_worker(pairs, cfg: TrainConfig, num_train_timesteps: int, steps, batches) -> None:
    """A render process: draws the batch of each step it is sent until it is sent None.

    The pool's specs come as arguments of the forked process (one copy per worker, never
    pickled per batch); a failure is sent back as the step's result for the consumer to raise.
    """
    for step in iter(steps.get, None):
        try:
            result: Batch | BaseException = draw_batch(pairs, cfg, num_train_timesteps, step)
        except BaseException as e:
            result = e
        batches.put((step, result))


def batch_stream(
    pairs: Sequence[tuple[str, object]],
    cfg: TrainConfig,
    num_train_timesteps: int,
    first_step: int,
) -> Iterator[Batch]:
    """Batches of steps ``first_step, first_step + 1, ...``, rendered ahead by ``cfg.data_workers``.

    Workers only run NumPy (no torch), so forking them from a process with torch threads is safe;
    at most two batches per worker are in flight. Closing the stream (or leaving the loop that
    drives it) terminates the workers.
    """
    if cfg.data_workers == 0:
        step = first_step
        while True:
            yield draw_batch(pairs, cfg, num_train_timesteps, step)
            step += 1
    ctx = multiprocessing.get_context("fork")
    steps, batches = ctx.Queue(), ctx.Queue()
    args = (pairs, cfg, num_train_timesteps, steps, batches)
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


def _to_cpu(state):
    """A (nested) state dict with every tensor on the CPU, so any host can load a checkpoint."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_to_cpu(v) for v in state)
    return state


def checkpoint_recipe(out_dir: str | Path, **overrides: object) -> TrainConfig:
    """The recipe ``out_dir``'s checkpoint was trained with, with ``overrides`` applied.

    Resuming continues that recipe: a setting not named in ``overrides`` keeps the checkpoint's
    value (not the default, which would silently undo a final phase, say). Settings of the run
    alone (threads, checkpoint and eval intervals) and fields added to :class:`TrainConfig`
    after the checkpoint was written take their defaults.
    """
    path = Path(out_dir) / STATE_FILE
    if not path.exists():
        raise TrainingError(f"cannot resume: {path} does not exist")
    saved = torch.load(path, weights_only=False, map_location="cpu")["train"]
    known = set(asdict(TrainConfig()))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TrainingError(f"unknown training settings: {', '.join(unknown)}")
    kept = {k: v for k, v in saved.items() if k in known and k not in _RUN_ONLY}
    return TrainConfig(**{**kept, **overrides})


def run_engine_config(
    config: EngineConfig, out_dir: str | Path, resume: bool, features: Iterable[str] = ()
) -> EngineConfig:
    """The engine a run trains: ``config`` with the UNet ``features`` (of :data:`UPGRADES`)
    switched on, and, on resume, those its checkpoint has: a feature once added stays."""
    features = set(features)
    unknown = sorted(features - set(UPGRADES))
    if unknown:
        raise TrainingError(
            f"unknown UNet features: {', '.join(unknown)} (known: {', '.join(UPGRADES)})"
        )
    path = Path(out_dir) / STATE_FILE
    if resume and path.exists():
        saved = torch.load(path, weights_only=False, map_location="cpu")["engine"]["unet"]
        features |= {f for f in UPGRADES if saved.get(f)}
    if not features:
        return config
    return replace(config, unet=replace(config.unet, **dict.fromkeys(features, True)))


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Learning rate at ``step`` over ``cfg.lr``: linear warm-up, flat, then an optional cosine."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_decay_from is not None and step > cfg.lr_decay_from:
        progress = min(1.0, (step - cfg.lr_decay_from) / max(1, cfg.lr_decay_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        factor *= cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * cosine
    return factor


def evaluate(
    model: Denoiser, config: EngineConfig, encoder: TextEncoder, train_cfg: TrainConfig
) -> dict:
    """Mean alignment per complexity on fixed held-out prompts, at the default steps."""
    engine = Engine(config, model, encoder)
    result = {}
    for i, level in enumerate(COMPLEXITY_LEVELS):
        pairs = sample_prompts(
            train_cfg.eval_prompts_per_level, seed=train_cfg.eval_seed + i, complexity=level
        )
        seeds = list(range(len(pairs)))
        images = engine.generate([t for t, _ in pairs], seeds)
        result[level] = float(mean_alignment(score_images(images, [s for _, s in pairs])).mean())
    result["all"] = float(np.mean([result[lv] for lv in COMPLEXITY_LEVELS]))
    return result


class Trainer:
    """One engine's training run, resumable from ``out_dir/train_state.pt``."""

    def __init__(
        self,
        config: EngineConfig,
        out_dir: str | Path,
        train_cfg: TrainConfig | None = None,
        encoder: TextEncoder | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.config = config
        self.cfg = train_cfg or TrainConfig()
        self.out_dir = Path(out_dir)
        if self.cfg.high_noise_from >= config.num_train_timesteps:
            raise TrainingError(
                f"high_noise_from is {self.cfg.high_noise_from}: expected below the "
                f"{config.num_train_timesteps} training timesteps of {config.name}"
            )
        # Every check of the settings comes before the encoder loads and the pool is encoded.
        if self.cfg.grounding_weight > 0 and config.unet.conditioning == "pooled":
            raise TrainingError(
                f"grounding_weight is {self.cfg.grounding_weight}, but {config.name} is "
                "conditioned on the pooled prompt (no cross-attention to ground)"
            )
        try:
            self.device = torch.device(self.cfg.device)
        except RuntimeError as e:
            raise TrainingError(f"device is {self.cfg.device!r}, expected cpu or cuda[:N]") from e
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(f"device is {self.cfg.device!r}, but torch sees no CUDA device")
        self.encoder = encoder or TextEncoder()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.pairs, self.pool_tokens, self.pool_mask = _prompt_pool(
            self.cfg, self.encoder, Path(cache_dir) if cache_dir else None
        )
        null_tokens, null_mask = self.encoder.encode([""])
        self.null_tokens = torch.from_numpy(null_tokens)
        self.null_mask = torch.from_numpy(null_mask)
        torch.manual_seed(self.cfg.data_seed)  # the initial weights
        self.model = Denoiser(config.unet).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        # Grounding: the training UNet (not the EMA copy) keeps its cross-attention maps.
        self.attention: AttentionMaps | None = None
        self.pool_groups: np.ndarray | None = None
        if self.cfg.grounding_weight > 0:
            self.pool_groups = group_token_masks(
                self.encoder.tokenizer,
                [t for t, _ in self.pairs],
                [spec for _, spec in self.pairs],
                self.pool_tokens.shape[1],
            )
            grounded = float(self.pool_groups.any(-1).any(-1).mean())
            log.info("grounding: %.1f%% of the training prompts grounded", 100 * grounded)
            self.attention = AttentionMaps(self.model.unet)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, functools.partial(lr_factor, self.cfg)
        )
        self.noise_scheduler = make_scheduler(config.num_train_timesteps, kind="ddpm")
        self.step = 0
        self.train_seconds = 0.0
        self.loss_ema: float | None = None
        self.grounding_ema: float | None = None
        self.curve: list[dict] = []
        self.losses: list[tuple[int, float]] = []
        # Recipe changes made on resume: [{"step": s, "changes": {field: [old, new]}}, ...]
        self.recipe_changes: list[dict] = []

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "engine": self.config.to_dict(),
            "train": asdict(self.cfg),
            "model": _to_cpu(self.model.state_dict()),
            "ema": _to_cpu(self.ema.state_dict()),
            "opt": _to_cpu(self.opt.state_dict()),
            "sched": self.sched.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "loss_ema": self.loss_ema,
            "curve": self.curve,
            "losses": self.losses,
            "recipe_changes": self.recipe_changes,
        }

    def save_checkpoint(self) -> Path:
        path = self.out_dir / STATE_FILE
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # atomic: a crash never leaves half a checkpoint
        save_engine(self.ema, self.config, self.out_dir)
        return path

    def load_checkpoint(self) -> None:
        path = self.out_dir / STATE_FILE
        if not path.exists():
            raise TrainingError(f"cannot resume: {path} does not exist")
        state = torch.load(path, weights_only=False, map_location="cpu")
        theirs = {k: state["engine"].get(k) for k in _TRAINED_FIELDS}
        ours = {k: self.config.to_dict()[k] for k in _TRAINED_FIELDS}
        # fields added to UNetConfig later take their defaults
        theirs["unet"] = UNetConfig.from_dict(theirs["unet"]).to_dict()
        upgrades = _upgrades(theirs["unet"], ours["unet"])
        if upgrades:
            theirs["unet"] = ours["unet"]
        if theirs != ours:
            diff = sorted(k for k in _TRAINED_FIELDS if theirs[k] != ours[k])
            raise TrainingError(
                f"cannot resume: {path} was trained with another engine config ({', '.join(diff)})"
            )
        if "position_channels" in upgrades:
            state = self._add_position_channels(state)
        if {"token_positions", "text_transformer"} & set(upgrades):
            state = self._add_new_parameters(state)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])  # moves its moments to the parameters' device
        self.sched.load_state_dict(state["sched"])
        if "rng" in state:
            # Written before batches were drawn per step: the data stream from here on is the
            # per-step one (as random, and reproducible from now on).
            log.info("checkpoint has a sequential data stream; continuing with per-step batches")
        self.step = state["step"]
        self.train_seconds = state["train_seconds"]
        self.loss_ema = state["loss_ema"]
        self.curve = state["curve"]
        self.losses = state["losses"]
        self.recipe_changes = state.get("recipe_changes", [])
        before = {**asdict(TrainConfig()), **state["train"]}  # fields added later: defaults
        changes = {
            k: [before[k], v]
            for k, v in asdict(self.cfg).items()
            if k not in _RUN_ONLY and before[k] != v
        }
        for flag in upgrades:
            changes[f"unet.{flag}"] = [False, True]
        if changes:
            self.recipe_changes.append({"step": self.step, "changes": changes})
            log.info("recipe changed at step %d: %s", self.step, changes)
        log.info("resumed %s at step %d", self.config.name, self.step)

    def _add_position_channels(self, state: dict) -> dict:
        """``state`` of a UNet without position channels, for this one with them: zero input
        weights (the same function) and zero Adam moments for the two new input channels."""
        log.info(
            "adding position channels to %s at step %d (zero weights)",
            self.config.name,
            state["step"],
        )
        names = [name for name, _ in self.model.named_parameters()]
        index = names.index(CONV_IN_WEIGHT)
        opt = copy.deepcopy(state["opt"])
        moments = opt["state"].get(index, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in moments:
                moments[key] = pad_position_inputs(moments[key])
        return {
            **state,
            "model": add_position_channels(state["model"]),
            "ema": add_position_channels(state["ema"]),
            "opt": opt,
        }

    def _add_new_parameters(self, state: dict) -> dict:
        """``state`` with this UNet's initial values for the parameters it lacks (those of a
        feature added after it was written, which leave the function unchanged at their initial
        values; they must come last, see :class:`~t2i_router.engines.unet.TokenPositions`), and
        the optimizer's parameter group extended to them (their Adam moments start fresh)."""
        params = dict(self.model.named_parameters())
        names = list(params)
        new = [i for i, name in enumerate(names) if name not in state["model"]]
        if new != list(range(len(names) - len(new), len(names))):
            raise TrainingError(f"cannot upgrade: new parameters {new} are not the UNet's last")
        fresh = {names[i]: params[names[i]].detach().to("cpu", copy=True) for i in new}
        log.info(
            "adding %s to %s at step %d (initial weights)",
            ", ".join(fresh),
            self.config.name,
            state["step"],
        )
        opt = copy.deepcopy(state["opt"])
        opt["param_groups"][-1]["params"] = list(opt["param_groups"][-1]["params"]) + new
        return {
            **state,
            "model": {**state["model"], **fresh},
            "ema": {**state["ema"], **fresh},
            "opt": opt,
        }

    # -- one step ----------------------------------------------------------------------------
    def batch(self, step: int | None = None) -> Batch:
        """The batch of ``step`` (default: the next step), drawn here without workers."""
        step = self.step if step is None else step
        return draw_batch(self.pairs, self.cfg, self.config.num_train_timesteps, step)

    def to_tensors(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """Noisy images, timesteps, tokens, mask and the v-prediction target, on the device."""
        x = torch.from_numpy(batch.images)
        noise = torch.from_numpy(batch.noise)
        t = torch.from_numpy(batch.timesteps)
        tokens = torch.from_numpy(self.pool_tokens[batch.pool_index].astype(np.float32))
        mask = torch.from_numpy(self.pool_mask[batch.pool_index])
        drop = torch.from_numpy(batch.drop)
        tokens = torch.where(drop[:, None, None], self.null_tokens, tokens)  # (B, L, D)
        mask = torch.where(drop[:, None], self.null_mask, mask)  # (B, L)
        noisy = self.noise_scheduler.add_noise(x, noise, t)
        target = self.noise_scheduler.get_velocity(x, noise, t)
        return tuple(v.to(self.device) for v in (noisy, t, tokens, mask, target))

    def train_step(self, batch: Batch | None = None) -> float:
        """One optimizer step; returns the denoising loss (without the grounding term)."""
        batch = self.batch() if batch is None else batch
        noisy, t, tokens, mask, target = self.to_tensors(batch)
        self.model.train()
        with self.attention or contextlib.nullcontext():
            denoising = torch.nn.functional.mse_loss(self.model(noisy, t, tokens, mask), target)
        loss = denoising
        if self.attention is not None:
            # a dropped prompt has no words to ground
            groups = self.pool_groups[batch.pool_index] & ~batch.drop[:, None, None]
            grounding = grounding_loss(
                self.attention.maps,
                torch.from_numpy(groups).to(self.device),
                torch.from_numpy(batch.masks).to(self.device),
            )
            loss = denoising + self.cfg.grounding_weight * grounding
            g = float(grounding.detach())
            self.grounding_ema = (
                g if self.grounding_ema is None else 0.98 * self.grounding_ema + 0.02 * g
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - self.cfg.ema_decay)
        self.step += 1
        value = float(denoising.detach())
        self.loss_ema = value if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * value
        return value

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        minutes: float | None = None,
        max_steps: int | None = None,
        progress: bool = True,
        evaluate_at_end: bool = True,
    ) -> dict:
        """Train until ``minutes`` of this call have passed or ``max_steps`` in all are done."""
        if minutes is None and max_steps is None:
            raise TrainingError("give minutes or max_steps")
        deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        last_ckpt = last_eval = time.monotonic()
        bar = tqdm(
            desc=f"train {self.config.name}", initial=self.step, unit="step", disable=not progress
        )
        stream = batch_stream(self.pairs, self.cfg, self.config.num_train_timesteps, self.step)
        try:
            while True:
                if max_steps is not None and self.step >= max_steps:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                t0 = time.monotonic()
                loss = self.train_step(next(stream))
                self.train_seconds += time.monotonic() - t0
                if self.step % 50 == 0:
                    self.losses.append((self.step, round(self.loss_ema or loss, 5)))
                bar.update(1)
                postfix = {"loss": f"{self.loss_ema:.4f}"}
                if self.grounding_ema is not None:
                    postfix["grounding"] = f"{self.grounding_ema:.3f}"
                bar.set_postfix(postfix, refresh=False)
                now = time.monotonic()
                if now - last_eval >= self.cfg.eval_every_s:
                    self.record_eval()
                    last_eval = time.monotonic()
                if now - last_ckpt >= self.cfg.checkpoint_every_s:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
        finally:
            stream.close()  # stops the render workers
            bar.close()
        if evaluate_at_end and (not self.curve or self.curve[-1]["step"] != self.step):
            self.record_eval()
        self.save_checkpoint()
        return {"step": self.step, "loss_ema": self.loss_ema, "curve": self.curve}

    def record_eval(self) -> dict:
        # Sampling runs on the CPU, as the engines are served here; a copy when training elsewhere.
        ema = self.ema if self.device.type == "cpu" else copy.deepcopy(self.ema).cpu()
        quality = evaluate(ema, self.config, self.encoder, self.cfg)
        entry = {
            "step": self.step,
            "train_minutes": round(self.train_seconds / 60.0, 2),
            "loss_ema": None if self.loss_ema is None else round(self.loss_ema, 5),
            "mean_alignment": {k: round(v, 4) for k, v in quality.items()},
            # the sampling it was measured with: defaults change, entries stay comparable
            "sampling": self.config.sampling(),
        }
        self.curve.append(entry)
        log.info("eval at step %d: %s", self.step, json.dumps(entry["mean_alignment"]))
        return entry
