"""Train an engine on scenes the world samples and renders on the fly: the :class:`Trainer`.

The recipe is :mod:`t2i_router.engines.recipe`'s, each step's batch
:mod:`t2i_router.engines.batches`' (the same whatever the device, the number of render workers,
or where a run was resumed), and what a resume may read or change
:mod:`t2i_router.engines.checkpoints`'. A run checkpoints every few minutes into
``train_state.pt`` (model, EMA, optimizer, schedule, learning curve; tensors on the CPU) and
resumes exactly from it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from t2i_router.engines.batches import Batch, batch_stream, draw_batch, prompt_pool
from t2i_router.engines.checkpoints import RUN_ONLY, TRAINED_FIELDS, state_to_cpu, unet_upgrades
from t2i_router.engines.config import EngineConfig
from t2i_router.engines.engine import Engine, save_engine
from t2i_router.engines.grounding import (
    AttentionMaps,
    grounding_loss,
    group_token_masks,
)
from t2i_router.engines.mix import mix_summary, pool_probabilities
from t2i_router.engines.recipe import STATE_FILE, TrainConfig, TrainingError, lr_factor
from t2i_router.engines.sampler import make_scheduler
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.engines.unet import (
    CONV_IN_WEIGHT,
    Denoiser,
    UNetConfig,
    add_position_channels,
    pad_position_inputs,
)
from t2i_router.world import COMPLEXITY_LEVELS, mean_alignment, sample_prompts, score_images

log = logging.getLogger(__name__)


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
    """One engine's training run, resumable from ``out_dir/train_state.pt``.

    A nonzero ``TrainConfig.threads`` calls ``torch.set_num_threads``, which is process-wide: it
    stays in force after the trainer is gone, for every later torch call in the process.
    """

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
        self.pairs, self.pool_tokens, self.pool_mask = prompt_pool(
            self.cfg, self.encoder, Path(cache_dir) if cache_dir else None
        )
        # The chance of drawing each pool prompt (None: uniform), fitted once per run.
        self.pool_p = pool_probabilities(
            self.pairs, self.cfg.level_weights, self.cfg.concept_shares
        )
        if self.pool_p is not None:
            log.info("training mix: %s", json.dumps(mix_summary(self.pairs, self.pool_p)))
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
            "model": state_to_cpu(self.model.state_dict()),
            "ema": state_to_cpu(self.ema.state_dict()),
            "opt": state_to_cpu(self.opt.state_dict()),
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
        theirs = {k: state["engine"].get(k) for k in TRAINED_FIELDS}
        ours = {k: self.config.to_dict()[k] for k in TRAINED_FIELDS}
        # fields added to UNetConfig later take their defaults
        theirs["unet"] = UNetConfig.from_dict(theirs["unet"]).to_dict()
        upgrades = unet_upgrades(theirs["unet"], ours["unet"])
        if upgrades:
            theirs["unet"] = ours["unet"]
        if theirs != ours:
            diff = sorted(k for k in TRAINED_FIELDS if theirs[k] != ours[k])
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
            if k not in RUN_ONLY and before[k] != v
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
        return draw_batch(self.pairs, self.cfg, self.config.num_train_timesteps, step, self.pool_p)

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
        stream = batch_stream(
            self.pairs, self.cfg, self.config.num_train_timesteps, self.step, self.pool_p
        )
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
