"""The training mix: level weights and concept shares shape which pool prompts are drawn."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from t2i_router.cli import main
from t2i_router.engines.batches import draw_batch
from t2i_router.engines.card import _card_markdown
from t2i_router.engines.mix import mix_summary, pool_probabilities
from t2i_router.engines.recipe import CONCEPTS, TrainConfig, TrainingError
from t2i_router.world import sample_prompts

POOL = sample_prompts(400, seed=3)


def _drawn_texts(cfg: TrainConfig, steps: int) -> list[str]:
    p = pool_probabilities(POOL, cfg.level_weights, cfg.concept_shares)
    return [POOL[i][0] for s in range(steps) for i in draw_batch(POOL, cfg, 1000, s, p).pool_index]


def _holds(text: str, word: str) -> bool:
    return re.search(rf"\b{word}s?\b", text.lower()) is not None


def test_concept_shares_are_met_together_by_the_pool_draw():
    shares = (("purple", 0.02), ("triangle", 0.1))
    p = pool_probabilities(POOL, (1.0, 1.0, 0.5, 0.5), shares)
    got = mix_summary(POOL, p)["concepts"]
    assert got["purple"] == pytest.approx(0.02, abs=1e-4)
    assert got["triangle"] == pytest.approx(0.1, abs=1e-4)
    assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
    plain = mix_summary(POOL, None)["concepts"]
    assert plain["purple"] > 0.1 and plain["triangle"] > 0.3  # they were common before


def test_sampled_training_texts_respect_the_concept_share_and_the_level_weights():
    cfg = TrainConfig(
        prompt_pool=len(POOL),
        batch_size=64,
        level_weights=(1, 1, 0, 0),
        concept_shares={"purple": 0.02},
    )
    texts = _drawn_texts(cfg, steps=50)  # 3,200 draws: 64 purple expected, sd 8
    purple = sum(_holds(t, "purple") for t in texts)
    assert 35 < purple < 95, purple
    single_group = {t for t, s in POOL if s.complexity in ("single", "group")}
    assert set(texts) <= single_group
    # the other colors share what purple gave up: each now well above purple
    red = sum(_holds(t, "red") for t in texts)
    assert red > 5 * purple


def test_a_concept_share_of_zero_holds_the_concept_out():
    cfg = TrainConfig(prompt_pool=len(POOL), batch_size=64, concept_shares=(("orange", 0.0),))
    texts = _drawn_texts(cfg, steps=20)
    assert not any(_holds(t, "orange") for t in texts)
    assert any(_holds(t, "purple") for t in texts)


def test_without_a_mix_the_draw_is_the_uniform_one_and_given_probabilities_change_nothing():
    cfg = TrainConfig(prompt_pool=len(POOL), batch_size=16)
    rng = np.random.default_rng([cfg.data_seed, 4])
    assert np.array_equal(draw_batch(POOL, cfg, 1000, 4).pool_index, rng.integers(400, size=16))
    mixed = replace(cfg, concept_shares=(("square", 0.05),))
    p = pool_probabilities(POOL, None, mixed.concept_shares)
    given = draw_batch(POOL, mixed, 1000, 4, p)
    computed = draw_batch(POOL, mixed, 1000, 4)
    assert np.array_equal(given.pool_index, computed.pool_index)
    assert np.array_equal(given.images, computed.images)


def test_concept_shares_are_checked_and_quote_the_bad_value():
    assert TrainConfig(concept_shares={"triangle": 0.1, "purple": 0.01}).concept_shares == (
        ("purple", 0.01),
        ("triangle", 0.1),
    )
    assert TrainConfig(concept_shares=[["purple", "0.5"]]).concept_shares == (("purple", 0.5),)
    for bad, message in (
        ({"pink": 0.1}, "names 'pink'"),
        ({"gray": 0.1}, "names 'gray'"),  # a background, not a group's color
        ([("red", 0.1), ("red", 0.2)], "names 'red' twice"),
        ({"red": 1.0}, "gives 'red' 1.0"),
        ({"red": -0.1}, "gives 'red' -0.1"),
        ({"red": float("nan")}, "gives 'red' nan"),
        ([("red",)], r"entry \('red',\) is not"),
        ({}, "is empty"),
    ):
        with pytest.raises(TrainingError, match=f"concept_shares {message}"):
            TrainConfig(concept_shares=bad)
    assert {"purple", "triangle", "small", "medium"} <= set(CONCEPTS)


def test_concept_shares_the_pool_cannot_meet_are_errors():
    singles = [(t, s) for t, s in POOL if s.complexity == "single"]
    with pytest.raises(TrainingError, match="hold out every prompt"):
        pool_probabilities(singles, None, (("circle", 0.0), ("square", 0.0), ("triangle", 0.0)))
    with pytest.raises(TrainingError, match="names 'purple', which no prompt"):
        pool_probabilities([p for p in POOL if "purple" not in p[0]], None, (("purple", 0.1),))
    # every single prompt holds one of the three shapes: 0.9 of each is impossible
    with pytest.raises(TrainingError, match="cannot be met together"):
        pool_probabilities(singles, None, (("circle", 0.9), ("square", 0.9)))


def test_cli_concept_share_flag_is_checked(capsys):
    for bad, message in (
        ("pink=0.1", "'pink=0.1' is not CONCEPT=SHARE"),
        ("purple", "'purple' is not CONCEPT=SHARE"),
        ("purple=lots", "'lots' is not a number"),
        ("purple=1", "the share must be in [0, 1)"),
    ):
        with pytest.raises(SystemExit):
            main(["engines", "train", "edge_small", "--concept-share", bad])
        assert message in capsys.readouterr().err


def test_the_model_card_states_the_training_mix():
    recipe = {"level_weights": [1.0, 1.0, 0.05, 0.05], "concept_shares": [["purple", 0.005]]}
    card = {
        "name": "edge_small",
        "parameters": 10,
        "config": {
            "unet": {"conditioning": "pooled", "block_out_channels": [16, 32, 32]},
            "default_steps": 8,
            "default_guidance": 1.0,
            "sampler": "unipc",
        },
        "training": {"steps": 5, "recipe": recipe},
        "cost": {"flops_per_image": 1e9, "latency_s_per_image": {"batch_1": 1, "batch_32": 1}}
        | {"threads": 1},
    }
    text = _card_markdown(card)
    assert "level weights single 1, group 1, pair 0.05, relation 0.05" in text
    assert "share of scenes holding purple 0.005 (0: held out)" in text
    card["training"]["recipe"] = {"level_weights": None, "concept_shares": None}
    assert "training mix" not in _card_markdown(card)


@pytest.mark.slow
def test_concept_shares_are_kept_on_resume_and_cleared_by_cli_none(tmp_path, capsys):
    import torch

    from t2i_router.engines import ENGINES, TextEncoder
    from t2i_router.engines.checkpoints import checkpoint_recipe
    from t2i_router.engines.training import Trainer

    models = tmp_path / "models"
    cfg = TrainConfig(prompt_pool=16, batch_size=2, concept_shares={"purple": 0.2})
    trainer = Trainer(ENGINES["edge_small"], models / "edge_small", cfg, encoder=TextEncoder())
    assert mix_summary(trainer.pairs, trainer.pool_p)["concepts"]["purple"] == pytest.approx(0.2)
    trainer.run(max_steps=1, progress=False, evaluate_at_end=False)
    # a resume keeps the checkpoint's shares unless told otherwise
    assert checkpoint_recipe(models / "edge_small").concept_shares == (("purple", 0.2),)
    argv = ["engines", "train", "edge_small", "--resume", "--max-steps", "1"]
    argv += ["--models-dir", str(models), "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--concept-share", "purple=0.1", "--concept-share", "none"]) == 2
    assert "--concept-share none clears the shares: give it alone" in capsys.readouterr().err
    assert main([*argv, "--concept-share", "none"]) == 0
    state = torch.load(models / "edge_small" / "train_state.pt", weights_only=False)
    assert state["train"]["concept_shares"] is None
    assert state["recipe_changes"][-1]["changes"]["concept_shares"] == [(("purple", 0.2),), None]
