"""Grounding loss: the cross-attention of a group's words should fall on the group's pixels.

After TokenCompose (Wang et al., CVPR 2024), which adds to the denoising loss of a text-to-image
UNet a loss on its cross-attention maps: for each noun token with a segmentation mask, the share
of the token's attention (over the image's pixels) that falls outside the mask. Here the renderer
gives exact masks for free, and the words are each group's color and shape ("red", "circles").
At high noise the UNet cannot see where a group will be, so the loss is lowest when the
attention goes where the prompt makes the group likely ("left of": the left side): a direct
signal for the layouts and bindings the denoising loss teaches only faintly
(docs/engines.md, "Cloud: grounding loss").

Only training uses this module: :class:`AttentionMaps` swaps the processors of a UNet's
cross-attention layers for ones that also keep their attention probabilities; the weights, the
ONNX graph and sampling are unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from t2i_router.world.spec import SceneSpec
from t2i_router.world.vocab import SHAPES

MAX_GROUPS = 2
_SHAPE_WORDS = {s for shape in SHAPES for s in (shape, shape + "s")}
_WORD = re.compile(r"[a-z]+")


def group_word_spans(text: str, spec: SceneSpec) -> list[list[tuple[int, int]]] | None:
    """Character spans of each group's color and shape words in ``text``, or None when the
    text does not name ``spec``'s groups as expected (then it is left out of the loss).

    A group is written "... <color> <shape>" (world.sampler's phrasings, groups in spec order;
    the background's words are never shape words), so the n-th shape word and the word before
    it belong to group n.
    """
    words = [(m.group(), m.span()) for m in _WORD.finditer(text.lower())]
    at = [i for i, (w, _) in enumerate(words) if w in _SHAPE_WORDS]
    if len(at) != len(spec.groups):
        return None
    spans = []
    for i, group in zip(at, spec.groups, strict=True):
        if i == 0:
            return None
        (color, color_span), (shape, shape_span) = words[i - 1], words[i]
        if color != group.color or shape not in (group.shape, group.shape + "s"):
            return None
        spans.append([color_span, shape_span])
    return spans


def group_token_masks(
    tokenizer, texts: Sequence[str], specs: Sequence[SceneSpec], max_tokens: int
) -> np.ndarray:
    """(N, MAX_GROUPS, max_tokens) bool: the tokens of each group's color and shape words, as
    ``tokenizer`` splits ``texts`` (padded and truncated to ``max_tokens``, like the encoder).
    A row is all False for a group the text lacks or that could not be found."""
    if len(texts) != len(specs):
        raise ValueError(f"{len(texts)} texts for {len(specs)} specs")
    out = np.zeros((len(texts), MAX_GROUPS, max_tokens), dtype=bool)
    for n, (text, spec) in enumerate(zip(texts, specs, strict=True)):
        spans = group_word_spans(text, spec)
        if spans is None:
            continue
        offsets = tokenizer(
            text, truncation=True, max_length=max_tokens, return_offsets_mapping=True
        )["offset_mapping"]
        for g, group_spans in enumerate(spans):
            for t, (a, b) in enumerate(offsets):
                if b > a and any(a < e and s < b for s, e in group_spans):
                    out[n, g, t] = True
    return out


class _RecordingProcessor:
    """diffusers' plain attention (``AttnProcessor``) that also keeps the head-averaged
    attention probabilities, (B, pixels, tokens), of a cross-attention call while its
    :class:`AttentionMaps` records."""

    def __init__(self, maps: AttentionMaps) -> None:
        self.maps = maps

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs
    ):
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross:
            raise NotImplementedError("grounding supports plain cross-attention layers only")
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, P, L)
        if encoder_hidden_states is not None and self.maps.recording:
            self.maps.store.append(probs.view(batch, -1, *probs.shape[1:]).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        return out / attn.rescale_output_factor


class AttentionMaps:
    """Keeps the attention maps of every cross-attention layer of ``unet`` during a forward
    pass: ``with maps: model(...)``, then ``maps.maps`` (one (B, pixels, tokens) tensor per
    layer call). Installed once; outside a ``with`` block nothing is kept."""

    def __init__(self, unet: torch.nn.Module) -> None:
        from diffusers.models.attention_processor import Attention

        self.store: list[torch.Tensor] = []
        self.recording = False
        self.maps: list[torch.Tensor] = []
        layers = [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
        if not layers:
            raise ValueError("the UNet has no cross-attention layers to ground")
        for layer in layers:
            if layer.residual_connection:
                raise NotImplementedError("grounding supports layers without a residual")
            layer.set_processor(_RecordingProcessor(self))
        self.n_layers = len(layers)

    def __enter__(self) -> AttentionMaps:
        self.store.clear()
        self.recording = True
        return self

    def __exit__(self, *exc) -> None:
        self.recording = False
        self.maps = list(self.store)
        self.store.clear()


def grounding_loss(
    maps: Sequence[torch.Tensor], token_masks: torch.Tensor, pixel_masks: torch.Tensor
) -> torch.Tensor:
    """Mean over layers and grounded groups of (1 - share of the group's attention inside its
    pixels)^2 (TokenCompose's token loss).

    Args:
        maps: per layer, (B, P, L) attention probabilities over the L tokens at P = r*r pixels.
        token_masks: (B, G, L) bool, the tokens of each group (all False: not grounded).
        pixel_masks: (B, G, 32, 32) bool or float, each group's pixels.
    """
    if not maps:
        raise ValueError("no attention maps: was the forward pass run inside AttentionMaps?")
    tokens = token_masks.to(maps[0].dtype)
    pixels = pixel_masks.to(maps[0].dtype)
    valid = tokens.any(-1) & (pixels.flatten(2).sum(-1) > 0)  # (B, G)
    if not bool(valid.any()):
        return maps[0].sum() * 0.0
    losses = []
    for a in maps:
        side = round(a.shape[1] ** 0.5)
        inside = F.adaptive_avg_pool2d(pixels, side).flatten(2)  # (B, G, P), fraction covered
        attention = torch.einsum("bpl,bgl->bgp", a, tokens)  # (B, G, P)
        share = (attention * inside).sum(-1) / attention.sum(-1).clamp(min=1e-6)
        losses.append(((1.0 - share) ** 2)[valid].mean())
    return torch.stack(losses).mean()
