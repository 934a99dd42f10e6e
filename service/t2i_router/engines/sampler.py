"""Sampling with classifier-free guidance, independent of what shares a batch.

Each image depends only on its prompt, seed, steps and guidance: the starting noise comes from
a generator seeded per image, the samplers (DDIM with eta = 0, DPM-Solver++ 2M, UniPC) add no
further noise and act on each image alone, and requests with other step counts are sampled in
their own loops; only float rounding in the denoiser's kernels depends on the batch
(docs/engines.md, "Batch invariance"). The denoiser is any callable with the
:class:`~t2i_router.engines.unet.Denoiser` signature, so torch and ONNX Runtime share this code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from t2i_router.errors import InvalidRequest

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SamplingError(InvalidRequest, ValueError):
    """Bad sampling settings (steps, guidance, seeds)."""


# Deterministic samplers an engine can use (EngineConfig.sampler); docs/engines.md, "Samplers".
SAMPLERS = ("ddim", "dpmpp_2m", "unipc")
SAMPLER_LABELS = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++ 2M", "unipc": "UniPC"}


def check_sampler(sampler: str) -> None:
    """Raise :class:`SamplingError` unless ``sampler`` is one of :data:`SAMPLERS`."""
    if sampler not in SAMPLERS:
        raise SamplingError(f"sampler is {sampler!r}, must be one of {', '.join(SAMPLERS)}")


@functools.cache
def _clipping(scheduler_class: type) -> type:
    """``scheduler_class`` whose dynamic thresholding is the clip it amounts to here.

    With ``sample_max_value`` 1, diffusers' per-image scale is a quantile of |x0| clamped to
    [1, 1], so the threshold is a clip to [-1, 1] (divided by 1); clipping directly gives the
    same values (a test checks it bit for bit) without sorting every image at every step, which
    was most of the solvers' own cost at batch 32 (benchmarks/test_bench_engines.py).
    """

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        return sample.clamp(-1.0, 1.0)

    return type(
        scheduler_class.__name__, (scheduler_class,), {"_threshold_sample": _threshold_sample}
    )


def make_scheduler(num_train_timesteps: int = 1000, kind: str = "ddim"):
    """The noise schedule the engines are trained and sampled with.

    ``kind`` ``ddpm``: the training schedule, cosine (squaredcos_cap_v2), v-prediction. The
    samplers (:data:`SAMPLERS`) share it, with trailing timesteps (the first step starts from
    pure noise) and the predicted image clipped to [-1, 1] at every step: ``ddim`` (eta 0),
    ``dpmpp_2m`` (DPM-Solver++, second order multistep; Lu et al. 2022) and ``unipc`` (UniPC,
    predictor-corrector, bh2; Zhao et al. 2023). The multistep solvers are configured with
    diffusers' dynamic thresholding at ``sample_max_value`` 1, which is a clip to [-1, 1] per
    image, and compute it as one (:func:`_clipping`).
    """
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    common = dict(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
    )
    if kind == "ddpm":
        return DDPMScheduler(**common, clip_sample=True)
    if kind == "ddim":
        return DDIMScheduler(
            **common, clip_sample=True, timestep_spacing="trailing", set_alpha_to_one=True
        )
    multistep = dict(
        **common,
        thresholding=True,
        sample_max_value=1.0,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
    )
    if kind == "dpmpp_2m":
        return _clipping(DPMSolverMultistepScheduler)(**multistep, algorithm_type="dpmsolver++")
    if kind == "unipc":
        return _clipping(UniPCMultistepScheduler)(**multistep)
    raise SamplingError(f"scheduler kind is {kind!r}, must be ddpm or one of {', '.join(SAMPLERS)}")


def check_sampling(steps: int, guidance: float, max_steps: int) -> None:
    """Raise :class:`SamplingError` quoting a bad step count or guidance scale."""
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer):
        raise SamplingError(f"steps is {steps!r}, must be an integer")
    if not 1 <= steps <= max_steps:
        raise SamplingError(f"steps is {steps}, must be in 1..{max_steps}")
    if not np.isfinite(guidance) or guidance < 0:
        raise SamplingError(f"guidance is {guidance}, must be a finite number >= 0")


def check_guidance_rescale(rescale: float) -> None:
    """Raise :class:`SamplingError` unless ``rescale`` is in [0, 1]."""
    if not (isinstance(rescale, int | float | np.floating) and 0.0 <= rescale <= 1.0):
        raise SamplingError(f"guidance_rescale is {rescale!r}, must be a number in [0, 1]")


def rescale_guided(v: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Pull a guided prediction's per-image std back toward the conditional one's.

    Guidance rescale (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    2024, sec. 3.4): large guidance scales inflate the prediction, which over-saturates pixel-space
    samples; ``rescale`` blends ``v * std(cond) / std(v)`` into ``v``. Per image, so an image
    never depends on what shares its batch; 0 leaves ``v`` as it is.
    """
    if rescale == 0.0:
        return v
    dims = tuple(range(1, v.dim()))
    ratio = cond.std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return rescale * (v * ratio) + (1.0 - rescale) * v


def initial_noise(seeds: Sequence[int]) -> torch.Tensor:
    """(B, 3, 32, 32) standard normal noise, row i drawn from a generator seeded with seeds[i]."""
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
        rows.append(torch.randn((3, 32, 32), generator=g))
    return torch.stack(rows) if rows else torch.zeros((0, 3, 32, 32))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, 32, 32) in [-1, 1] -> (B, 32, 32, 3) uint8."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


@torch.inference_mode()
def diffusion_sample(
    denoise: DenoiseFn,
    tokens: torch.Tensor,  # (B, L, D)
    mask: torch.Tensor,  # (B, L)
    null_tokens: torch.Tensor,  # (1, L, D): the empty prompt, for guidance
    null_mask: torch.Tensor,  # (1, L)
    seeds: Sequence[int],
    steps: int,
    guidance: float | Sequence[float] | np.ndarray,
    num_train_timesteps: int = 1000,
    max_steps: int = 1000,
    guidance_rescale: float = 0.0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    sampler: str = "ddim",
) -> np.ndarray:
    """Generate (B, 32, 32, 3) uint8 images with ``sampler`` and classifier-free guidance.

    ``guidance`` may be one scale or one per image; at exactly 1 an image is sampled from its
    conditional prediction alone (no empty-prompt pass).
    ``guidance_rescale`` (in [0, 1], see :func:`rescale_guided`) is the engine's, one for all.
    ``on_step(i, x0)``, if given, sees at step ``i`` the prediction of the final image
    (B, 3, 32, 32), clipped to [-1, 1]: where in sampling a picture's layout is decided.
    ``sampler`` is one of :data:`SAMPLERS` (:func:`make_scheduler`).
    """
    b = tokens.shape[0]
    if len(seeds) != b:
        raise SamplingError(f"{len(seeds)} seeds for {b} prompts")
    g = np.broadcast_to(np.asarray(guidance, dtype=np.float64), (b,))
    for gi in g:
        check_sampling(steps, float(gi), max_steps)
    check_guidance_rescale(guidance_rescale)
    check_sampler(sampler)
    scheduler = make_scheduler(num_train_timesteps, sampler)
    scheduler.set_timesteps(steps)
    alphas = scheduler.alphas_cumprod
    x = initial_noise(seeds)
    if b == 0:
        return to_uint8(x)
    scale = torch.tensor(g, dtype=torch.float32).view(b, 1, 1, 1)
    # Rows at guidance 1 are their conditional prediction exactly: they skip the empty-prompt
    # pass, which halves their cost, and depend on nothing else in the batch either way.
    guided = torch.from_numpy(np.flatnonzero(g != 1.0))
    k = len(guided)
    cond_tokens = torch.cat([tokens, null_tokens.expand(k, -1, -1)])
    cond_mask = torch.cat([mask, null_mask.expand(k, -1)])
    for i, t in enumerate(scheduler.timesteps):
        timestep = torch.full((b + k,), int(t), dtype=torch.int64)
        out = denoise(torch.cat([x, x[guided]]), timestep, cond_tokens, cond_mask)
        v = out[:b].clone()
        if k:
            cond, uncond = out[guided], out[b:]
            v[guided] = rescale_guided(
                uncond + scale[guided] * (cond - uncond), cond, guidance_rescale
            )
        if on_step is not None:
            # v-prediction: x0 = sqrt(a) x_t - sqrt(1 - a) v, as every sampler computes it
            a = alphas[int(t)]
            on_step(i, (a.sqrt() * x - (1 - a).sqrt() * v).clamp(-1, 1))
        x = scheduler.step(v, t, x).prev_sample
    return to_uint8(x)
