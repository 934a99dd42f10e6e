"""Reading training checkpoints (``train_state.pt``): the recipe and UNet a run was trained with,
and what a resume may change or add (new UNet features, run-only settings).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from t2i_router.engines.config import EngineConfig
from t2i_router.engines.recipe import STATE_FILE, TrainConfig, TrainingError

log = logging.getLogger(__name__)


# UNet features a trained checkpoint gains on resume without changing what it computes
# (position channels: two more input channels of conv_in, zero weights; token positions and the
# text transformer: new parameters, the UNet's last, at their initial values, which leave the
# function unchanged).
UPGRADES = ("position_channels", "token_positions", "text_transformer")


def unet_upgrades(theirs: dict, ours: dict) -> list[str]:
    """The features of :data:`UPGRADES` that turn UNet config ``theirs`` into ``ours`` (empty
    when ``ours`` is not ``theirs`` with some of them switched on)."""
    flags = [f for f in UPGRADES if ours.get(f) and not theirs.get(f)]
    if flags and {**theirs, **dict.fromkeys(flags, True)} == ours:
        return flags
    return []


# The engine fields a checkpoint's weights depend on; the sampling defaults (steps, guidance,
# rescale, max_steps) may change between runs (the current ones are saved with the weights).
TRAINED_FIELDS = ("name", "unet", "num_train_timesteps")


# Settings that change how fast a run goes or how it is observed, not what it learns.
RUN_ONLY = frozenset({"threads", "checkpoint_every_s", "eval_every_s", "device", "data_workers"})


def state_to_cpu(state):
    """A (nested) state dict with every tensor on the CPU, so any host can load a checkpoint."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: state_to_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(state_to_cpu(v) for v in state)
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
    kept = {k: v for k, v in saved.items() if k in known and k not in RUN_ONLY}
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
