"""Ground-truth renders satisfy their prompts, and each metric notices a change in its aspect."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from t2i_router.world import (
    ALIGNMENT_ASPECTS,
    ASPECTS,
    ObjectGroup,
    PromptError,
    SceneSpec,
    mean_alignment,
    pareto_relative_superiority,
    parse_prompt,
    perturb_spec,
    render,
    sample_prompts,
    score_images,
)
from t2i_router.world.renderer import layout
from t2i_router.world.vocab import PALETTE

IDX = {a: i for i, a in enumerate(ASPECTS)}


@pytest.fixture(scope="module")
def rendered():
    specs = [spec for _, spec in sample_prompts(1000, seed=21)]
    images = np.stack([render(spec, i) for i, spec in enumerate(specs)])
    return specs, images, score_images(images, specs)


def test_render_is_32x32_rgb_and_reproducible():
    spec = parse_prompt("two red circles left of a blue square on black")
    image = render(spec, 3)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, render(spec, 3))
    assert (image[0, 0] == PALETTE["black"]).all() or (image == PALETTE["black"]).all(-1).any()


def test_renders_of_1000_sampled_prompts_score_near_one(rendered):
    specs, _, scores = rendered
    align = scores[:, : len(ALIGNMENT_ASPECTS)]
    for k, name in enumerate(ALIGNMENT_ASPECTS):
        column = align[:, k][~np.isnan(align[:, k])]
        assert column.mean() >= 0.95, name
        assert np.mean(column >= 0.9) >= 0.99, name
    assert np.isnan(scores[:, IDX["relation"]]).sum() == sum(s.relation is None for s in specs)
    assert (scores[:, IDX["cleanliness"]] == 1.0).all()


def test_render_counts_colors_and_gaps_exactly(rendered):
    specs, images, _ = rendered
    for spec, image in zip(specs[:200], images[:200]):
        for g in spec.groups:
            mask = (image == PALETTE[g.color]).all(-1)
            _, n = ndimage.label(mask, structure=np.ones((3, 3)))
            same_color = sum(h.count for h in spec.groups if h.color == g.color)
            assert n == same_color, spec.to_text()  # objects never touch, even diagonally
        assert ((image == PALETTE[spec.background]).all(-1)).mean() > 0.3


def test_every_layout_geometry_renders():
    """Counts x sizes x relations: the layouts that depend on geometry all exist."""
    sizes = ("small", "medium", "large")
    for c1, c2, s1, s2 in itertools.product(range(1, 5), range(1, 5), sizes, sizes):
        for relation in (None, "left_of", "right_of", "above", "below"):
            try:
                spec = SceneSpec(
                    (ObjectGroup(c1, "red", "triangle", s1), ObjectGroup(c2, "blue", "circle", s2)),
                    relation,
                )
            except PromptError:
                continue
            for seed in range(3):
                assert len(layout(spec, np.random.default_rng(seed))) == c1 + c2


@pytest.mark.parametrize("aspect", ALIGNMENT_ASPECTS)
def test_a_prompt_changed_in_one_aspect_scores_lower_on_it(rendered, aspect):
    specs, images, scores = rendered
    rng = np.random.default_rng(7)
    pairs = [(i, perturb_spec(rng, s, aspect)) for i, s in enumerate(specs)]
    pairs = [(i, p) for i, p in pairs if p is not None]
    assert len(pairs) >= 200
    idx = np.array([i for i, _ in pairs])
    changed = score_images(images[idx], [p for _, p in pairs])
    k = IDX[aspect]
    assert np.mean(changed[:, k] < scores[idx, k]) >= 0.95
    others = [IDX[a] for a in ALIGNMENT_ASPECTS if a not in (aspect, "relation")]
    if aspect in ("size", "relation"):  # the others also move object matching or purity
        np.testing.assert_allclose(changed[:, others], scores[idx][:, others])


def test_noise_and_blank_images_score_low(rendered):
    specs, images, scores = rendered
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, images.shape, dtype=np.uint8)
    blank = np.full_like(images, 255)
    for junk in (noise, blank):
        junk_scores = score_images(junk, specs)
        assert mean_alignment(junk_scores).mean() < 0.3
        assert (mean_alignment(junk_scores) < mean_alignment(scores)).mean() > 0.99
    assert score_images(noise, specs)[:, IDX["cleanliness"]].mean() < 0.5
    assert score_images(blank, specs)[:, IDX["sharpness"]].max() == 0.0


def test_blurred_image_is_less_sharp_than_its_original(rendered):
    specs, images, scores = rendered
    blurred = ndimage.gaussian_filter(images.astype(np.float64), sigma=(0, 1, 1, 0))
    blurred = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
    blurred_scores = score_images(blurred, specs)
    assert (blurred_scores[:, IDX["sharpness"]] < scores[:, IDX["sharpness"]]).all()


def test_scores_stay_in_unit_interval_on_random_images():
    specs = [spec for _, spec in sample_prompts(300, seed=9)]
    rng = np.random.default_rng(1)
    # Blocky random images: palette colors in random cells, so objects of odd shapes appear.
    palette = np.array(list(PALETTE.values()), dtype=np.uint8)
    cells = rng.integers(0, len(palette), (300, 8, 8))
    images = palette[cells].repeat(4, axis=1).repeat(4, axis=2)
    scores = score_images(images, specs)
    finite = scores[~np.isnan(scores)]
    assert finite.min() >= 0.0 and finite.max() <= 1.0


def test_score_images_rejects_bad_batches():
    spec = parse_prompt("a red circle")
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\)"):
        score_images(np.zeros((1, 16, 16, 3), np.uint8), [spec])
    with pytest.raises(ValueError, match="uint8"):
        score_images(np.zeros((1, 32, 32, 3), np.float32), [spec])
    with pytest.raises(ValueError, match="1 images but 2 specs"):
        score_images(np.zeros((1, 32, 32, 3), np.uint8), [spec, spec])


def test_prs_is_half_for_equal_vectors_and_antisymmetric():
    rng = np.random.default_rng(3)
    a = rng.random((100, 8))
    b = rng.random((100, 8))
    a[:50, 5] = np.nan
    b[:50, 5] = np.nan
    mu_e, mu_c = rng.random(8), rng.random(8)
    w = rng.random(8)
    np.testing.assert_allclose(pareto_relative_superiority(a, a, mu_e, mu_c, 0.5, w), 0.5)
    np.testing.assert_allclose(
        pareto_relative_superiority(a, b, mu_e, mu_c, 0.5, w),
        1.0 - pareto_relative_superiority(b, a, mu_e, mu_c, 0.5, w),
    )
    better = np.clip(a + 0.2, 0, 1)
    assert (pareto_relative_superiority(a, better, mu_e, mu_c)[50:] < 0.5).all()


def test_prs_rejects_bad_parameters():
    q = np.ones(8)
    with pytest.raises(ValueError, match="gamma is 0"):
        pareto_relative_superiority(q, q, q, q, gamma=0)
    with pytest.raises(ValueError, match="weights"):
        pareto_relative_superiority(q, q, q, q, weights=-np.ones(8))
    with pytest.raises(ValueError, match=r"\(7,\)"):
        pareto_relative_superiority(q, q[:7], q, q)
