"""Train an engine on scenes the world samples and renders on the fly.

Recipe (DESIGN, "Engines"): DDPM 1000 steps, cosine schedule, v-prediction, AdamW, linear
warm-up, gradient clipping, EMA weights, the prompt dropped to the empty prompt 10% of the time
so that classifier-free guidance works. Prompts come from a fixed pool (encoded once and cached),
each drawn with a fresh random layout, so no two training images repeat.

A run checkpoints every few minutes into ``train_state.pt`` (model, EMA, optimizer, schedule,
random states, learning curve) and resumes exactly from it with ``resume=True``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from t2i_router.engines.engine import Engine, save_engine
from t2i_router.engines.sampler import make_scheduler
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.engines.unet import Denoiser, EngineConfig
from t2i_router.world import COMPLEXITY_LEVELS, mean_alignment, render, sample_prompts, score_images

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


class TrainingError(RuntimeError):
    """A run cannot start or resume (missing or mismatched checkpoint)."""


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
    checkpoint_every_s: float = 300.0
    eval_every_s: float = 900.0
    eval_prompts_per_level: int = 16
    eval_seed: int = 777_000  # never used for training data
    threads: int = 0  # 0 = torch's default


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


# The engine fields a checkpoint's weights depend on; the sampling defaults (steps, guidance,
# rescale, max_steps) may change between runs (the current ones are saved with the weights).
_TRAINED_FIELDS = ("name", "unet", "num_train_timesteps")

# Settings that change how fast a run goes or how it is observed, not what it learns.
_RUN_ONLY = frozenset({"threads", "checkpoint_every_s", "eval_every_s"})


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
        self.encoder = encoder or TextEncoder()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.pairs, self.pool_tokens, self.pool_mask = _prompt_pool(
            self.cfg, self.encoder, Path(cache_dir) if cache_dir else None
        )
        null_tokens, null_mask = self.encoder.encode([""])
        self.null_tokens = torch.from_numpy(null_tokens)
        self.null_mask = torch.from_numpy(null_mask)
        torch.manual_seed(self.cfg.data_seed)
        self.model = Denoiser(config.unet)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, functools.partial(lr_factor, self.cfg)
        )
        self.noise_scheduler = make_scheduler(config.num_train_timesteps, kind="ddpm")
        self.rng = np.random.default_rng(self.cfg.data_seed)
        self.step = 0
        self.train_seconds = 0.0
        self.loss_ema: float | None = None
        self.curve: list[dict] = []
        self.losses: list[tuple[int, float]] = []
        # Recipe changes made on resume: [{"step": s, "changes": {field: [old, new]}}, ...]
        self.recipe_changes: list[dict] = []

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "engine": self.config.to_dict(),
            "train": asdict(self.cfg),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
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
        state = torch.load(path, weights_only=False)
        theirs = {k: state["engine"].get(k) for k in _TRAINED_FIELDS}
        ours = {k: self.config.to_dict()[k] for k in _TRAINED_FIELDS}
        if theirs != ours:
            diff = sorted(k for k in _TRAINED_FIELDS if theirs[k] != ours[k])
            raise TrainingError(
                f"cannot resume: {path} was trained with another engine config ({', '.join(diff)})"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
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
        if changes:
            self.recipe_changes.append({"step": self.step, "changes": changes})
            log.info("recipe changed at step %d: %s", self.step, changes)
        log.info("resumed %s at step %d", self.config.name, self.step)

    # -- one step ----------------------------------------------------------------------------
    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (B, 3, 32, 32) in [-1, 1], tokens (B, L, D), mask (B, L)."""
        idx = self.rng.integers(len(self.pairs), size=self.cfg.batch_size)
        layout_seeds = self.rng.integers(2**62, size=self.cfg.batch_size)
        images = np.stack(
            [render(self.pairs[i][1], int(s)) for i, s in zip(idx, layout_seeds, strict=True)]
        )
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        tokens = torch.from_numpy(self.pool_tokens[idx].astype(np.float32))
        mask = torch.from_numpy(self.pool_mask[idx])
        drop = torch.from_numpy(self.rng.random(self.cfg.batch_size) < self.cfg.text_dropout)
        tokens = torch.where(drop[:, None, None], self.null_tokens, tokens)
        mask = torch.where(drop[:, None], self.null_mask, mask)
        return x, tokens, mask

    def train_step(self) -> float:
        x, tokens, mask = self.batch()
        noise = torch.randn_like(x)
        t = torch.randint(0, self.config.num_train_timesteps, (x.shape[0],))
        noisy = self.noise_scheduler.add_noise(x, noise, t)
        target = self.noise_scheduler.get_velocity(x, noise, t)
        self.model.train()
        loss = torch.nn.functional.mse_loss(self.model(noisy, t, tokens, mask), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - self.cfg.ema_decay)
        self.step += 1
        value = float(loss.detach())
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
        try:
            while True:
                if max_steps is not None and self.step >= max_steps:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                t0 = time.monotonic()
                loss = self.train_step()
                self.train_seconds += time.monotonic() - t0
                if self.step % 50 == 0:
                    self.losses.append((self.step, round(self.loss_ema or loss, 5)))
                bar.update(1)
                bar.set_postfix(loss=f"{self.loss_ema:.4f}", refresh=False)
                now = time.monotonic()
                if now - last_eval >= self.cfg.eval_every_s:
                    self.record_eval()
                    last_eval = time.monotonic()
                if now - last_ckpt >= self.cfg.checkpoint_every_s:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
        finally:
            bar.close()
        if evaluate_at_end and (not self.curve or self.curve[-1]["step"] != self.step):
            self.record_eval()
        self.save_checkpoint()
        return {"step": self.step, "loss_ema": self.loss_ema, "curve": self.curve}

    def record_eval(self) -> dict:
        quality = evaluate(self.ema, self.config, self.encoder, self.cfg)
        entry = {
            "step": self.step,
            "train_minutes": round(self.train_seconds / 60.0, 2),
            "loss_ema": None if self.loss_ema is None else round(self.loss_ema, 5),
            "mean_alignment": {k: round(v, 4) for k, v in quality.items()},
            # the sampling it was measured with: defaults change, entries stay comparable
            "sampling": {
                "steps": self.config.default_steps,
                "guidance": self.config.default_guidance,
                "guidance_rescale": self.config.guidance_rescale,
            },
        }
        self.curve.append(entry)
        log.info("eval at step %d: %s", self.step, json.dumps(entry["mean_alignment"]))
        return entry
