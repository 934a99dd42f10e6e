"""The two engines' denoisers: diffusers ``UNet2DConditionModel`` in pixel space (3x32x32).

Both take the same inputs, so the sampler, the exporter and Triton treat them alike::

    denoiser(sample (B, 3, 32, 32), timestep (B,), tokens (B, L, 384), mask (B, L))
        -> velocity (B, 3, 32, 32)

Conditioning is the design lever that makes the edge engine weak on composition, as real edge
models are (DESIGN, "Engines"):

- ``pooled``: the masked mean of the token embeddings is projected and added to the time
  embedding; no cross-attention. Binding colors to shapes, counts and relations must pass
  through one 384-vector.
- ``cross_attention_low``: token-level cross-attention at the lowest resolution only.
- ``cross_attention``: token-level cross-attention at every resolution (the cloud engine).

``position_channels`` appends two coordinate maps (x and y in [-1, 1]) to the input. A UNet
otherwise learns where it draws only from the zero padding of its convolutions, and its
attention has no positional embedding: "A left of B" needs to know left from right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from t2i_router.engines.text_encoder import EMBED_DIM, MAX_TOKENS, pooled

Conditioning = Literal["pooled", "cross_attention_low", "cross_attention"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of one engine's UNet; saved next to its weights.

    Attributes:
        block_out_channels: channels per resolution (32, 16, 8 pixels).
        layers_per_block: ResNet layers per block.
        conditioning: how the prompt enters (see the module docstring).
        attention_head_dim: channels per attention head.
        only_cross_attention: per resolution, True replaces the self-attention of the transformer
            blocks by a second cross-attention (diffusers' flag). Self-attention over the 1,024
            pixels of the top level dominated the step time on CPU; measured in the engines
            notes of docs/engines.md.
        norm_num_groups: GroupNorm groups (must divide every channel count).
        position_channels: the UNet also sees x and y coordinate maps as two input channels
            (constants inside the denoiser; its inputs stay the same).
        token_positions: a learned embedding of each token's place in the prompt is added to
            the token embeddings the cross-attention reads (:class:`TokenPositions`); only with
            cross-attention.
        text_transformer: a trainable transformer layer over the prompt's tokens, between the
            frozen text encoder and the cross-attention (:class:`TextTransformer`); only with
            cross-attention.
    """

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    conditioning: Conditioning = "pooled"
    attention_head_dim: int = 8
    only_cross_attention: tuple[bool, ...] = ()
    norm_num_groups: int = 8
    text_dim: int = EMBED_DIM
    position_channels: bool = False
    token_positions: bool = False
    text_transformer: bool = False

    def __post_init__(self) -> None:
        if self.conditioning not in ("pooled", "cross_attention_low", "cross_attention"):
            raise ValueError(f"unknown conditioning {self.conditioning!r}")
        for flag in ("token_positions", "text_transformer"):
            if getattr(self, flag) and self.conditioning == "pooled":
                raise ValueError(f"{flag} needs cross-attention; conditioning is 'pooled'")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"{c} channels do not split into {self.norm_num_groups} groups")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        d["only_cross_attention"] = list(self.only_cross_attention)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = dict(d)
        d["block_out_channels"] = tuple(d["block_out_channels"])
        d["only_cross_attention"] = tuple(d.get("only_cross_attention", ()))
        return cls(**d)


N_POSITION_CHANNELS = 2
CONV_IN_WEIGHT = "unet.conv_in.weight"


def position_maps(size: int = 32) -> torch.Tensor:
    """(1, 2, size, size): x (left -1 to right 1) and y (top -1 to bottom 1) of each pixel."""
    ramp = torch.linspace(-1.0, 1.0, size)
    y, x = torch.meshgrid(ramp, ramp, indexing="ij")
    return torch.stack([x, y])[None]


def add_position_channels(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of a UNet without position channels, for the same UNet with them.

    The input convolution gets zero weights for the two coordinate channels, so the denoiser
    computes the same function (to float rounding: the wider convolution may run another kernel
    that sums in another order); training then learns to use them. Used to upgrade a trained
    checkpoint (:meth:`~t2i_router.engines.training.Trainer.load_checkpoint`).
    """
    return {**state, CONV_IN_WEIGHT: pad_position_inputs(state[CONV_IN_WEIGHT])}


def pad_position_inputs(weight: torch.Tensor) -> torch.Tensor:
    """A 3-input-channel ``conv_in`` weight (or its Adam moment) with zeros for the coordinates."""
    if weight.shape[1] != 3:
        raise ValueError(f"{CONV_IN_WEIGHT} has {weight.shape[1]} input channels, expected 3")
    pad = weight.new_zeros((weight.shape[0], N_POSITION_CHANNELS, *weight.shape[2:]))
    return torch.cat([weight, pad], dim=1)


def _build(cfg: UNetConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.block_out_channels)
    common = dict(
        sample_size=32,
        in_channels=3 + (N_POSITION_CHANNELS if cfg.position_channels else 0),
        out_channels=3,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
    )
    if cfg.conditioning == "pooled":
        return UNet2DConditionModel(
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            mid_block_type="UNetMidBlock2D",
            class_embed_type="projection",
            projection_class_embeddings_input_dim=cfg.text_dim,
            **common,
        )
    if cfg.conditioning == "cross_attention_low":
        down = ("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",)
        up = ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1)
    else:
        down = ("CrossAttnDownBlock2D",) * n
        up = ("CrossAttnUpBlock2D",) * n
    return UNet2DConditionModel(
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=cfg.text_dim,
        attention_head_dim=cfg.attention_head_dim,
        only_cross_attention=cfg.only_cross_attention or False,
        **common,
    )


class PositionConv(nn.Conv2d):
    """The input convolution of a UNet with position channels: the image's 3 channels and the 2
    coordinate maps, with the weights of one 5-channel convolution (the same state dict).

    The same as convolving the concatenation, but the coordinates' share is computed at batch 1
    and broadcast, and the image's with a contiguous 3-channel weight: concatenating them made
    the convolution's kernel depend on the batch size, and an image then changed (by 1 in a pixel)
    with what else shared its batch.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("positions", position_maps(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        image = self._conv_forward(x, w[:, :3].contiguous(), self.bias)
        where = self._conv_forward(self.positions.to(x.dtype), w[:, 3:].contiguous(), None)
        return image + where


class TokenPositions(nn.Module):
    """Adds a learned embedding of each token's place in the prompt to its embedding.

    MiniLM's contextual embeddings barely say where a token stands: "red" as the subject of "a
    red circle left of a blue square" and as the object of "a blue square left of a red circle"
    have cosine similarity 0.96 (docs/engines.md), so the cross-attention can hardly tell which
    group a relation puts on which side. Padding stays zero (its keys stay zero: the
    cross-attention has no key mask); zero-initialised, a trained UNet gains it unchanged.
    """

    def __init__(self, n_tokens: int = MAX_TOKENS, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_tokens, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L, D)
        present = (tokens != 0).any(dim=-1, keepdim=True).to(tokens.dtype)
        return tokens + self.weight[: tokens.shape[1]] * present


class TextTransformer(nn.Module):
    """One pre-norm transformer layer over the prompt's tokens, with a learned embedding of each
    token's place, added as a residual to the token embeddings the cross-attention reads.

    The frozen MiniLM barely says which group a relation puts where: a color token as the
    relation's subject and as its object differ by 4%, under the opposite relation by 0.1%
    (docs/engines.md). A trainable layer can mix each group's words with the relation's and
    their order ("red ... left of ... blue": red belongs on the left), so that the pixels'
    queries need only ask for what belongs on their side. Padding keys are masked out and
    padding stays zero (the cross-attention has no key mask); the output projection starts at
    zero, so a trained UNet gains the layer unchanged (the other weights start at their usual
    initialisation, or nothing would learn).
    """

    def __init__(
        self, dim: int = EMBED_DIM, n_tokens: int = MAX_TOKENS, heads: int = 6, hidden: int = 768
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} channels do not split into {heads} heads")
        self.heads = heads
        self.positions = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L, D)
        b, n, d = tokens.shape
        present = (tokens != 0).any(dim=-1, keepdim=True).to(tokens.dtype)  # (B, L, 1)
        h = tokens + self.positions[:n]
        q, k, v = self.qkv(self.norm1(h)).reshape(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, L, d / heads)
        logits = q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5
        logits = logits + (1.0 - present.transpose(1, 2)[:, None]) * -1e4  # padding keys
        mixed = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        h = h + self.proj(mixed)
        h = h + self.mlp(self.norm2(h))
        return tokens + self.out(h) * present


class Denoiser(nn.Module):
    """One engine's UNet behind the shared (sample, timestep, tokens, mask) signature."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = _build(config)
        if config.position_channels:
            old = self.unet.conv_in
            conv = PositionConv(
                old.in_channels, old.out_channels, old.kernel_size, padding=old.padding
            )
            conv.load_state_dict(old.state_dict())
            self.unet.conv_in = conv
        # Registered after the UNet: its parameter comes last, so an optimizer state saved
        # without it lines up with the UNet's parameters (the resume upgrade appends it).
        self.token_positions = (
            TokenPositions(dim=config.text_dim) if config.token_positions else None
        )
        self.text_transformer = (
            TextTransformer(dim=config.text_dim) if config.text_transformer else None
        )

    def forward(
        self,
        sample: torch.Tensor,  # (B, 3, 32, 32)
        timestep: torch.Tensor,  # (B,)
        tokens: torch.Tensor,  # (B, L, D)
        mask: torch.Tensor,  # (B, L), 1 = token
    ) -> torch.Tensor:
        if self.config.conditioning == "pooled":
            out = self.unet(
                sample,
                timestep,
                encoder_hidden_states=None,
                class_labels=pooled(tokens, mask),
                return_dict=False,
            )
        else:
            # No attention mask: padding embeddings are zero (the encoder zeroes them), so their
            # keys are zero too. diffusers' mask reshaping does not export with a dynamic batch.
            if self.token_positions is not None:
                tokens = self.token_positions(tokens)
            if self.text_transformer is not None:
                tokens = self.text_transformer(tokens)
            out = self.unet(sample, timestep, encoder_hidden_states=tokens, return_dict=False)
        return out[0]

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def tiny_unet_config(conditioning: Conditioning) -> UNetConfig:
    """A UNet of a few thousand parameters with the given conditioning, for tests and smoke runs
    (diffusers-style tiny models: every code path of the real engines, in milliseconds)."""
    return UNetConfig(
        block_out_channels=(8, 8),
        conditioning=conditioning,
        norm_num_groups=4,
        only_cross_attention=(True, False) if conditioning != "pooled" else (),
        position_channels=conditioning == "cross_attention",
        token_positions=conditioning == "cross_attention",
        text_transformer=conditioning == "cross_attention",
    )


# Tiny stand-ins for the two engines, by engine name.
TINY_ENGINE_UNETS: dict[str, UNetConfig] = {
    "edge_small": tiny_unet_config("pooled"),
    "cloud_large": tiny_unet_config("cross_attention"),
}
