"""A trained engine: denoiser weights, its config, and the text encoder; generates images."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from t2i_router.engines.config import EngineConfig
from t2i_router.engines.sampler import DenoiseFn, SamplingError, check_sampling, diffusion_sample
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.engines.unet import Denoiser
from t2i_router.errors import MissingFileError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "model_card.json"


class WeightsNotFoundError(MissingFileError):
    """An engine folder lacks its config or weights."""


def save_engine(model: Denoiser, config: EngineConfig, out_dir: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (float32) into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return out_dir


def load_denoiser(engine_dir: str | Path) -> tuple[Denoiser, EngineConfig]:
    """Load an engine folder written by :func:`save_engine`."""
    from safetensors.torch import load_file

    engine_dir = Path(engine_dir)
    config_path, weights_path = engine_dir / CONFIG_FILE, engine_dir / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.exists():
            raise WeightsNotFoundError(f"engine weights missing: {path} does not exist")
    config = EngineConfig.from_dict(json.loads(config_path.read_text()))
    model = Denoiser(config.unet)
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval(), config


class Engine:
    """Generate images with one engine in-process (torch, or any denoise function)."""

    def __init__(
        self,
        config: EngineConfig,
        denoise: DenoiseFn,
        encoder: TextEncoder | None = None,
    ) -> None:
        self.config = config
        self.denoise = denoise
        self.encoder = encoder or TextEncoder()
        self._null: tuple[torch.Tensor, torch.Tensor] | None = None

    def null_condition(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt's tokens (1, L, D) and mask (1, L): guidance's null condition.

        Encoded once, on first use (not in ``__init__``: a BLS encoder can only be called once
        Triton serves requests).
        """
        if self._null is None:
            tokens, mask = self.encoder.encode([""])
            self._null = torch.from_numpy(tokens), torch.from_numpy(mask)
        return self._null

    @classmethod
    def load(cls, engine_dir: str | Path, encoder: TextEncoder | None = None) -> Engine:
        model, config = load_denoiser(engine_dir)
        return cls(config, model, encoder)

    def resolve(
        self,
        n: int,
        steps: int | Sequence[int] | np.ndarray | None,
        guidance: float | Sequence[float] | np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-image steps (n,) and guidance (n,), defaults filled in and validated.

        Raises:
            SamplingError: quoting the first bad step count or guidance scale.
        """
        steps_v = np.broadcast_to(
            np.asarray(self.config.default_steps if steps is None else steps), (n,)
        )
        guidance_v = np.broadcast_to(
            np.asarray(self.config.default_guidance if guidance is None else guidance, float), (n,)
        )
        for s, g in zip(steps_v, guidance_v, strict=True):
            check_sampling(s.item(), float(g), self.config.max_steps)
        return steps_v.astype(np.int64), guidance_v.astype(np.float64)

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int | Sequence[int] | np.ndarray | None = None,
        guidance: float | Sequence[float] | np.ndarray | None = None,
        batch_size: int = 64,
    ) -> np.ndarray:
        """(B, 32, 32, 3) uint8 images, one seed per prompt; any text is accepted.

        ``steps`` and ``guidance`` are one value for all or one per prompt (None: the engine's
        defaults). Prompts are encoded once; images with the same step count share UNet calls.
        """
        n = len(prompts)
        if len(seeds) != n:
            raise SamplingError(f"{n} prompts but {len(seeds)} seeds")
        steps_v, guidance_v = self.resolve(n, steps, guidance)
        images = np.zeros((n, 32, 32, 3), np.uint8)
        if n == 0:
            return images
        tokens, mask = (torch.from_numpy(a) for a in self.encoder.encode(list(prompts)))
        null_tokens, null_mask = self.null_condition()
        seeds = np.asarray(seeds, dtype=np.int64)
        for s in np.unique(steps_v):
            rows = np.flatnonzero(steps_v == s)
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                images[chunk] = diffusion_sample(
                    self.denoise,
                    tokens[chunk],
                    mask[chunk],
                    null_tokens,
                    null_mask,
                    seeds[chunk].tolist(),
                    int(s),
                    guidance_v[chunk],
                    self.config.num_train_timesteps,
                    self.config.max_steps,
                    self.config.guidance_rescale,
                    sampler=self.config.sampler,
                )
        return images
