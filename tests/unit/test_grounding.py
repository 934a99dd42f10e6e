"""Grounding loss: word spans, token masks, attention maps, the loss, and training with it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from t2i_router.cli import main
from t2i_router.engines import Denoiser, EngineConfig, TextEncoder
from t2i_router.engines.grounding import (
    AttentionMaps,
    grounding_loss,
    group_token_masks,
    group_word_spans,
)
from t2i_router.engines.recipe import TrainConfig, TrainingError
from t2i_router.engines.training import Trainer
from t2i_router.engines.unet import tiny_unet_config
from t2i_router.world import parse_prompt, render, sample_prompts
from t2i_router.world.renderer import render_with_masks
from t2i_router.world.vocab import PALETTE


def tiny(conditioning: str = "cross_attention") -> EngineConfig:
    return EngineConfig(name="tiny", unet=tiny_unet_config(conditioning), default_steps=3)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_render_with_masks_gives_renders_image_and_each_groups_pixels():
    for text, spec in sample_prompts(60, seed=5):
        image, masks = render_with_masks(spec, 123)
        np.testing.assert_array_equal(image, render(spec, 123), err_msg=text)
        assert masks.shape == (len(spec.groups), 32, 32)
        painted = np.any(image != PALETTE[spec.background], axis=-1)
        np.testing.assert_array_equal(masks.any(0), painted, err_msg=text)
        assert not (masks[0] & masks[-1]).any() or len(spec.groups) == 1  # groups never overlap
        for g, group in zip(masks, spec.groups, strict=True):
            assert (image[g] == PALETTE[group.color]).all(), text


def test_every_sampled_phrasing_names_its_groups_color_and_shape_words():
    for text, spec in sample_prompts(500, seed=11):
        spans = group_word_spans(text, spec)
        assert spans is not None, text
        for (color, shape), group in zip(spans, spec.groups, strict=True):
            assert text[slice(*color)].lower() == group.color, text
            assert text[slice(*shape)].lower().rstrip("s") == group.shape, text


def test_a_text_that_does_not_name_the_spec_is_left_out():
    spec = parse_prompt("a red circle left of a blue square")
    assert group_word_spans("a blue circle left of a blue square", spec) is None  # wrong color
    assert group_word_spans("a red circle", spec) is None  # a group missing
    assert group_word_spans("circle", parse_prompt("a red circle")) is None  # no color word


def test_group_token_masks_mark_the_wordpieces_of_each_group(encoder):
    texts = ["Two small white circles right of a blue circle gray backdrop", "a red triangle"]
    specs = [parse_prompt(t) for t in texts]
    masks = group_token_masks(encoder.tokenizer, texts, specs, max_tokens=24)
    assert masks.shape == (2, 2, 24) and masks.dtype == bool
    ids = encoder.tokenizer(texts[0])["input_ids"]
    words = encoder.tokenizer.convert_ids_to_tokens(ids)
    assert [words[i] for i in np.nonzero(masks[0, 0])[0]] == ["white", "circles"]
    assert [words[i] for i in np.nonzero(masks[0, 1])[0]] == ["blue", "circle"]
    assert masks[1, 0].sum() == 2 and not masks[1, 1].any()  # one group only
    with pytest.raises(ValueError, match="2 texts for 1 specs"):
        group_token_masks(encoder.tokenizer, texts, specs[:1], max_tokens=24)


def _maps(inside: float, side: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image whose group covers the top-left quarter; token 1 of 3 is the group's word and
    puts ``inside`` of its attention mass there."""
    pixels = torch.zeros(1, 2, 32, 32, dtype=torch.bool)
    pixels[0, 0, :16, :16] = True
    tokens = torch.zeros(1, 2, 3, dtype=torch.bool)
    tokens[0, 0, 1] = True
    quarter = torch.zeros(side, side, dtype=torch.bool)
    quarter[: side // 2, : side // 2] = True
    column = torch.where(quarter.flatten(), inside / quarter.sum(), (1 - inside) / (~quarter).sum())
    maps = torch.full((1, side * side, 3), 0.5)
    maps[0, :, 1] = column
    return maps, tokens, pixels


@pytest.mark.parametrize("inside", [1.0, 0.5, 0.0])
def test_grounding_loss_is_the_squared_share_of_attention_outside(inside):
    maps, tokens, pixels = _maps(inside)
    loss = grounding_loss([maps, _maps(inside, side=8)[0]], tokens, pixels)
    assert loss.item() == pytest.approx((1 - inside) ** 2, abs=1e-6)


def test_grounding_loss_skips_groups_without_words_or_pixels_and_has_gradients():
    maps, tokens, pixels = _maps(0.25)
    maps.requires_grad_(True)
    loss = grounding_loss([maps], tokens, pixels)
    loss.backward()
    assert loss.item() == pytest.approx(0.75**2) and maps.grad.abs().sum() > 0
    nothing = grounding_loss([maps], torch.zeros_like(tokens), pixels)
    assert nothing.item() == 0.0
    with pytest.raises(ValueError, match="no attention maps"):
        grounding_loss([], tokens, pixels)


def test_attention_maps_keep_probabilities_and_leave_the_output_unchanged(encoder):
    torch.manual_seed(0)
    model = Denoiser(tiny_unet_config("cross_attention")).eval()
    plain = Denoiser(tiny_unet_config("cross_attention")).eval()
    plain.load_state_dict(model.state_dict())
    tokens, mask = encoder.encode(["a red circle", "two blue squares above a green triangle"])
    args = (torch.randn(2, 3, 32, 32), torch.tensor([10, 900]), torch.from_numpy(tokens))
    maps = AttentionMaps(model.unet)
    with torch.no_grad():
        with maps:
            out = model(*args, torch.from_numpy(mask))
        again = model(*args, torch.from_numpy(mask))  # outside the block: nothing kept
        assert maps.store == [] and not maps.recording
        torch.testing.assert_close(out, plain(*args, torch.from_numpy(mask)))
    torch.testing.assert_close(out, again)
    assert len(maps.maps) == maps.n_layers > 0
    for m in maps.maps:
        assert m.shape[0] == 2 and m.shape[2] == 24
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:2]))
    with pytest.raises(ValueError, match="no cross-attention"):
        AttentionMaps(Denoiser(tiny_unet_config("pooled")).unet)


def test_training_with_grounding_lowers_the_grounding_loss_on_a_fixed_batch(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=32, batch_size=8, text_dropout=0.0, grounding_weight=1.0)
    torch.manual_seed(0)
    trainer = Trainer(tiny(), tmp_path, cfg, encoder=encoder)
    assert trainer.pool_groups.any(-1)[:, 0].all()  # every prompt's first group is grounded
    fixed = trainer.batch()
    trainer.train_step(fixed)
    first = trainer.grounding_ema
    for _ in range(30):
        trainer.train_step(fixed)
    assert trainer.grounding_ema < first
    # the EMA copy and the saved weights are a plain UNet: same keys as without grounding
    plain = Trainer(tiny(), tmp_path / "plain", replace(cfg, grounding_weight=0.0), encoder=encoder)
    assert plain.attention is None and plain.grounding_ema is None
    assert trainer.model.state_dict().keys() == plain.model.state_dict().keys()


def test_grounding_needs_cross_attention_and_a_non_negative_weight(encoder, tmp_path, capsys):
    pooled = TrainConfig(prompt_pool=8, grounding_weight=0.5)
    with pytest.raises(TrainingError, match=r"grounding_weight is 0\.5, but tiny is conditioned"):
        Trainer(tiny("pooled"), tmp_path, pooled, encoder=encoder)
    for bad in (-1.0, float("nan")):
        with pytest.raises(TrainingError, match="grounding_weight is"):
            TrainConfig(grounding_weight=bad)
    with pytest.raises(SystemExit):
        main(["engines", "train", "cloud_large", "--grounding-weight", "-0.1"])
    assert "-0.1 must be a finite number >= 0" in capsys.readouterr().err
