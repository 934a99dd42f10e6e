"""The engine quality report: held-out prompts, the routing gap and its goals, the CLI's files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from t2i_router.cli import main
from t2i_router.engines import Denoiser, Engine, EngineConfig, TextEncoder, save_engine
from t2i_router.engines.card import CURVE_FILE, _card_markdown, learning_curve_plot, measure_cost
from t2i_router.engines.prompts import (
    REPORT_MAX_N,
    REPORT_SEED,
    held_out_prompts,
    training_texts,
    tuning_prompts,
)
from t2i_router.engines.report import (
    aspect_table,
    aspects_by_level,
    control_scores,
    control_table,
    controls_summary,
    gap_report,
    quality_report,
    score_engine,
)
from t2i_router.engines.unet import TINY_ENGINE_UNETS
from t2i_router.world import COMPLEXITY_LEVELS, render, sample_prompts


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def tiny(name: str, encoder: TextEncoder, seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    config = EngineConfig(name=name, unet=TINY_ENGINE_UNETS[name], default_steps=2)
    return Engine(config, Denoiser(config.unet).eval(), encoder)


def test_held_out_prompts_are_balanced_and_never_the_training_prompts():
    pairs = held_out_prompts(8)
    assert [s.complexity for _, s in pairs] == [lv for lv in COMPLEXITY_LEVELS for _ in range(2)]
    seen = training_texts()
    assert len(seen) > 5000
    naive = {t for t, _ in held_out_prompts(200)}
    assert naive & seen  # the world is small: a fresh seed alone repeats simple prompts
    held_out = held_out_prompts(200, exclude=seen)
    assert len(held_out) == 200 and not {t for t, _ in held_out} & seen
    first_singles = {t for t, _ in sample_prompts(8, seed=REPORT_SEED, complexity="single")}
    with pytest.raises(ValueError, match="only 0 single prompts"):
        held_out_prompts(8, exclude=first_singles)


def test_tuning_prompts_are_neither_training_nor_report_prompts():
    tuning = tuning_prompts(200)
    texts = {t for t, _ in tuning}
    assert len(tuning) == 200
    assert [s.complexity for _, s in tuning[::50]] == list(COMPLEXITY_LEVELS)
    assert not texts & training_texts()
    report_texts = {t for t, _ in held_out_prompts(REPORT_MAX_N, exclude=training_texts())}
    assert not texts & report_texts
    # any smaller report is a prefix of the largest one, so it is excluded too
    small = held_out_prompts(40, exclude=training_texts())
    assert {t for t, _ in small} <= report_texts
    with pytest.raises(ValueError, match=f"seed is {REPORT_SEED}, the report's own"):
        tuning_prompts(8, seed=REPORT_SEED)


def test_gap_report_per_level_and_goals():
    levels = np.array(["single", "group", "pair", "relation"] * 2)
    edge = np.array([0.8, 0.6, 0.4, 0.2, 0.8, 0.6, 0.4, 0.2])
    cloud = np.array([0.8, 0.8, 0.8, 0.8, 0.7, 0.8, 0.8, 0.8])
    gap = gap_report(edge, cloud, levels)
    assert gap["cloud_minus_edge"]["single"] == pytest.approx(-0.05)
    assert gap["cloud_minus_edge"]["relation"] == pytest.approx(0.6)
    assert gap["cloud_minus_edge"]["all"] == pytest.approx(np.mean(cloud - edge), abs=1e-4)
    assert gap["edge_at_least_as_good"]["single"] == 1.0  # ties count for the edge
    assert gap["edge_at_least_as_good"]["all"] == 0.25
    assert gap["goals"] == {
        "cloud_beats_edge_by_0.15": True,
        "edge_as_good_on_20_to_60_percent": True,
        "gap_grows_with_complexity": True,
    }
    flat = gap_report(edge, edge + 0.1, levels)["goals"]
    assert flat == {
        "cloud_beats_edge_by_0.15": False,
        "edge_as_good_on_20_to_60_percent": False,
        "gap_grows_with_complexity": False,
    }


def test_aspects_by_level_skip_aspects_that_do_not_apply():
    nan = float("nan")
    #                   background color count shape size relation sharpness cleanliness
    scores = np.array(
        [
            [1.0, 1.0, 0.5, 1.0, 0.0, nan, 0.9, 1.0],  # single
            [1.0, 0.5, 1.0, 0.0, 1.0, nan, 0.9, 1.0],  # single
            [0.0, 1.0, 1.0, 1.0, 1.0, 0.25, 0.9, 1.0],  # relation
        ]
    )
    levels = np.array(["single", "single", "relation"])
    by_level = aspects_by_level(scores, levels)
    assert by_level["single"] == {
        "background": 1.0,
        "color": 0.75,
        "count": 0.75,
        "shape": 0.5,
        "size": 0.5,
        "relation": None,
    }
    assert by_level["relation"]["relation"] == 0.25 and by_level["relation"]["background"] == 0.0
    assert by_level["group"]["color"] is None  # no prompt of that level
    report = {"engines": {"edge_small": {"aspects_by_level": by_level}}}
    report["engines"]["cloud_large"] = {"aspects_by_level": aspects_by_level(1 - scores, levels)}
    table = aspect_table(report)
    assert "| shape | 0.500 / 0.500 | - | - | 1.000 / 0.000 |" in table
    assert "| relation | - | - | - | 0.250 / 0.750 |" in table


def test_composition_controls_tell_following_from_ignoring():
    pairs = sample_prompts(24, seed=5, complexity="relation") + sample_prompts(
        8, seed=6, complexity="single"
    )
    specs = [s for _, s in pairs]
    truth = np.stack([render(s, i) for i, s in enumerate(specs)])
    controls = control_scores(truth, specs)
    assert np.isnan(controls["relation"][24:]).all()  # no relation to reverse
    assert np.isnan(controls["shape_binding"][24:]).all()  # one group: nothing to bind
    summary = controls_summary(controls)
    relation, binding = summary["relation"], summary["shape_binding"]
    assert relation["n_prompts"] == 24 and 0 < binding["n_prompts"] < 24
    # ground truth follows the prompt: it scores well against it, badly against the reversal
    assert relation["prompted"] > 0.9 and relation["counterfactual"] < 0.1
    assert binding["prompted"] > 0.9 and binding["counterfactual"] < 0.2
    # a flipped image (left <-> right, top <-> bottom) follows the opposite relation instead
    flipped = summary_of(truth[:, ::-1, ::-1], specs)["relation"]
    assert flipped["prompted"] < 0.1 and flipped["counterfactual"] > 0.8
    table = control_table({"engines": {"truth": {"controls": summary}}})
    diff = relation["prompted"] - relation["counterfactual"]
    assert (
        f"| truth | {relation['prompted']:.3f} / {relation['counterfactual']:.3f} ({diff:+.3f})"
        in table
    )


def summary_of(images, specs):
    return controls_summary(control_scores(np.ascontiguousarray(images), specs))


def test_engines_are_compared_on_the_same_seeds(encoder):
    engine = tiny("edge_small", encoder)
    pairs = held_out_prompts(4)
    q1, images1, _ = score_engine(engine, pairs, seeds_per_prompt=2)
    q2, images2, _ = score_engine(engine, pairs, seeds_per_prompt=2)
    np.testing.assert_array_equal(images1, images2)
    np.testing.assert_array_equal(q1, q2)
    assert images1.shape == (4, 32, 32, 3)
    report, _, _ = quality_report({"edge_small": engine, "cloud_large": engine}, n=4)
    assert report["gap"]["cloud_minus_edge"]["all"] == 0.0  # one engine against itself
    assert report["gap"]["edge_at_least_as_good"]["all"] == 1.0


def test_cli_report_writes_json_table_and_grid(encoder, tmp_path, capsys):
    models = tmp_path / "models"
    for name in ("edge_small", "cloud_large"):
        engine = tiny(name, encoder)
        save_engine(engine.denoise, engine.config, models / name)
    out = tmp_path / "docs"
    args = ["engines", "report", "--n", "4", "--seeds", "1", "--models-dir", str(models)]
    assert main([*args, "--out-dir", str(out)]) == 0
    report = json.loads((out / "engines_report.json").read_text())
    assert set(report["engines"]) == {
        "edge_small",
        "cloud_large",
        "edge_small_untrained",
        "cloud_large_untrained",
    }
    assert set(report["goals"]) >= {"cloud_beats_edge_by_0.15", "gap_grows_with_complexity"}
    table = (out / "engines_report.md").read_text()
    assert "| cloud - edge |" in table and "--n 4 --seeds 1" in table
    assert "| aspect (edge_small / cloud_large) |" in table
    assert (out / "engines_report.png").read_bytes()[:4] == b"\x89PNG"
    # The same report with the UNets run by ONNX Runtime, as Triton serves them.
    ort_out = tmp_path / "docs_ort"
    assert main([*args, "--runtime", "onnxruntime", "--out-dir", str(ort_out)]) == 0
    ort = json.loads((ort_out / "engines_report.json").read_text())
    assert (report["runtime"], ort["runtime"]) == ("torch", "onnxruntime")
    for name, entry in report["engines"].items():
        assert ort["engines"][name]["mean_alignment"]["all"] == pytest.approx(
            entry["mean_alignment"]["all"], abs=0.02
        ), name
    assert "--runtime onnxruntime" in (ort_out / "engines_report.md").read_text()
    capsys.readouterr()
    assert main(["engines", "report", "--models-dir", str(tmp_path / "none")]) == 2
    assert "train it first" in capsys.readouterr().err


def test_model_card_markdown_names_recipe_changes_and_the_curve():
    quality = {lv: 0.5 for lv in COMPLEXITY_LEVELS} | {"all": 0.5}
    card = {
        "name": "cloud_large",
        "parameters": 1234,
        "config": {
            "unet": {"conditioning": "cross_attention", "block_out_channels": [8, 16]},
            "default_steps": 20,
            "default_guidance": 2.0,
        },
        "training": {
            "steps": 10,
            "batch_size": 32,
            "train_minutes": 1.0,
            "data_seed": 1000,
            "final_loss_ema": 0.05,
            "learning_curve": [
                {"step": 10, "train_minutes": 1.0, "loss_ema": 0.05, "mean_alignment": quality},
                {
                    "step": 20,
                    "train_minutes": 2.0,
                    "loss_ema": 0.04,
                    "mean_alignment": quality,
                    "sampling": {"steps": 20, "guidance": 1.0, "guidance_rescale": 0.0},
                },
            ],
            "recipe_changes": [{"step": 5, "changes": {"ema_decay": [0.995, 0.999]}}],
        },
        "cost": {
            "flops_per_image": 2e9,
            "latency_s_per_image": {"batch_1": 0.1, "batch_32": 0.05},
            "threads": 2,
        },
    }
    text = _card_markdown(card)
    assert f"![learning curve]({CURVE_FILE})" in text
    assert "- from step 5: ema_decay 0.995 -> 0.999" in text
    assert "| 10 | 1.0 | 0.05 | * | " in text  # measured before sampling was recorded
    assert "| 20 | 2.0 | 0.04 | 20 / 1.0 | " in text
    assert "\\* measured with the engine's default sampling of the time" in text
    assert "- default sampling: DDIM 20 steps, guidance 2.0\n" in text
    card["config"] |= {"default_guidance": 3.0, "guidance_rescale": 0.7}
    assert "guidance 3.0, guidance rescale 0.7\n" in _card_markdown(card)
    card["config"] |= {"default_guidance": 1.0}
    assert "guidance 1.0 (the conditional prediction alone" in _card_markdown(card)
    assert "position channels" not in text
    card["config"]["unet"]["position_channels"] = True
    assert "channels [8, 16], x/y position channels. Trained" in _card_markdown(card)
    card["config"]["unet"]["token_positions"] = True
    assert "x/y position channels, token positions. Trained" in _card_markdown(card)


def test_learning_curve_plot_draws_every_level_and_the_recipe_changes(tmp_path):
    from PIL import Image

    curve = []
    for step in (100, 200, 300):
        quality = {lv: 0.2 * k + step / 1000 for k, lv in enumerate(COMPLEXITY_LEVELS)}
        curve.append(
            {"step": step, "mean_alignment": quality | {"all": np.mean([*quality.values()])}}
        )
    changes = [{"step": 150, "changes": {}}]
    path = learning_curve_plot(curve, changes, tmp_path / "curve.png", "tiny")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (360, 640, 3)
    # Lines in colour (the levels), a black line (all) and gray dashes: far from a blank canvas.
    assert (image.std(axis=2) > 40).sum() > 500
    curve[2]["sampling"] = {"steps": 8, "guidance": 1.0}  # a new default from step 300
    marked = learning_curve_plot(curve, changes, tmp_path / "marked.png", "tiny")
    marked = np.asarray(Image.open(marked).convert("RGB"))
    assert not np.array_equal(marked, image)  # the dotted line (and its legend entry) is drawn


def test_cost_counts_one_unet_pass_per_step_at_guidance_one(encoder):
    guided = tiny("cloud_large", encoder)
    plain = Engine(replace(guided.config, default_guidance=1.0), guided.denoise, encoder)
    cost_guided, cost_plain = measure_cost(guided, repeats=1), measure_cost(plain, repeats=1)
    assert (cost_guided["unet_passes_per_step"], cost_plain["unet_passes_per_step"]) == (2, 1)
    assert cost_guided["flops_per_image"] == 2 * cost_plain["flops_per_image"] > 0
    assert cost_plain["flops_per_image"] == cost_plain["unet_flops_per_pass"] * 2  # 2 steps
