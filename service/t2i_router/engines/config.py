"""The engines' configuration: :class:`EngineConfig` (saved as an engine folder's config.json)
and the registry of the engines this project trains, :data:`ENGINES`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from t2i_router.engines.sampler import check_sampler
from t2i_router.engines.unet import UNetConfig

__all__ = ["EDGE_DESIGNS", "ENGINES", "EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    """An engine: its UNet, how it samples by default, and how it was trained.

    Attributes:
        name: ``edge_small`` or ``cloud_large`` (or a deployment's own name).
        unet: the denoiser's architecture.
        default_steps: sampler steps when a request gives none.
        default_guidance: classifier-free guidance scale when a request gives none.
        max_steps: the largest step count a request may ask for.
        guidance_rescale: the engine's guidance rescale in [0, 1] (``sampler.rescale_guided``);
            0 is plain classifier-free guidance.
        sampler: the engine's sampler, one of ``sampler.SAMPLERS`` (``ddim``, ``dpmpp_2m``,
            ``unipc``); engine folders written before it existed sample with ``ddim``.
    """

    name: str
    unet: UNetConfig = field(default_factory=UNetConfig)
    default_steps: int = 6
    default_guidance: float = 2.0
    max_steps: int = 100
    num_train_timesteps: int = 1000
    guidance_rescale: float = 0.0
    sampler: str = "ddim"

    def __post_init__(self) -> None:
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale is {self.guidance_rescale}, must be in [0, 1]")
        check_sampler(self.sampler)

    def sampling(self) -> dict:
        """How the engine samples by default (learning-curve entries, weight comparisons)."""
        return {
            "steps": self.default_steps,
            "guidance": self.default_guidance,
            "guidance_rescale": self.guidance_rescale,
            "sampler": self.sampler,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EngineConfig:
        d = dict(d)
        d["unet"] = UNetConfig.from_dict(d["unet"])
        return cls(**d)


# The weak-conditioning edge candidates DESIGN names, at the edge's size; which one edge_small
# keeps is measured by benchmarks/edge_designs.py (docs/edge_designs.md).
EDGE_DESIGNS: dict[str, UNetConfig] = {
    "pooled": UNetConfig(block_out_channels=(16, 32, 32), conditioning="pooled"),
    "cross_attention_low": UNetConfig(
        block_out_channels=(16, 32, 32), conditioning="cross_attention_low"
    ),
}

_EDGE = EngineConfig(
    name="edge_small",
    unet=EDGE_DESIGNS["pooled"],
    # 8 UNet passes, the edge's budget, spent on 8 steps at guidance 1 (guidance 2 would halve
    # the steps); UniPC: +0.015 on DDIM at the same cost (docs/engines.md, "Samplers")
    default_steps=8,
    default_guidance=1.0,
    sampler="unipc",
)

ENGINES: dict[str, EngineConfig] = {
    # The router's edge. Issue 21 retrains it from scratch on a narrower mix (mostly single
    # and group scenes, a rare color; the recipe is in its checkpoint and model card), so that
    # its gap to the cloud depends on the prompt; the UNet and sampling stay as they were.
    "edge_small": _EDGE,
    # The edge before issue 21 (46,740 steps on all levels, 2 2 1 1 from 26,740), kept
    # loadable by name from models/edge_small_v1 (docs/engines.md, "A narrower edge").
    "edge_small_v1": replace(_EDGE, name="edge_small_v1"),
    "cloud_large": EngineConfig(
        name="cloud_large",
        unet=UNetConfig(
            block_out_channels=(32, 64, 96),
            conditioning="cross_attention",
            only_cross_attention=(True, True, False),
            # added at 10,170 steps (zero weights, the function unchanged): its relation aspect
            # was at chance, 0.19 for it and the pooled-only edge alike (docs/engines.md)
            position_channels=True,
            # an A/B from 13,321 steps found no gain in 1,000 steps (docs/engines.md, "Cloud:
            # token positions"); kept off, to be tried again from the start of a long run
            token_positions=False,
            # a 2,400-step arm from 20,323 steps moved neither the layout at t = 999 nor the
            # tuning score (docs/engines.md, "Cloud: what the cloud would need at t = 999")
            text_transformer=False,
        ),
        default_steps=20,
        # with UniPC, guidance 1.5 adds 0.002 at twice the cost (docs/sampling_cloud_large.md)
        default_guidance=1.0,
        sampler="unipc",
    ),
}
