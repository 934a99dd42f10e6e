"""The edge design comparison runs end to end on a tiny budget, resumes, and chooses by the rule."""

from __future__ import annotations

import json
from pathlib import Path

import edge_designs
import pytest


def test_edge_designs_smoke_and_resume(tmp_path: Path) -> None:
    common = ["--n", "4", "--seeds", "1", "--prompt-pool", "32", "--quiet", "--cache-dir", ""]
    common += ["--out-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]
    common += ["--table", str(tmp_path / "t.md")]
    result = edge_designs.main(["--steps", "2", *common])
    assert set(result["designs"]) == {"pooled", "cross_attention_low"}
    pooled, xattn = result["designs"]["pooled"], result["designs"]["cross_attention_low"]
    assert pooled["steps"] == 2 and pooled["parameters"] < xattn["parameters"]
    assert set(pooled["gap"]["cloud_minus_edge"]) == {"single", "group", "pair", "relation", "all"}
    assert json.loads((tmp_path / "r.json").read_text())["steps"] == 2
    assert "| pooled |" in (tmp_path / "t.md").read_text()
    resumed = edge_designs.main(["--steps", "3", "--resume", "--designs", "pooled", *common])
    assert resumed["designs"]["pooled"]["steps"] == 3
    assert (tmp_path / "runs" / "pooled" / "train_state.pt").exists()


def _design(single: float, relation: float, share: float) -> dict:
    gap = {"single": single, "group": 0.0, "pair": relation, "relation": relation, "all": 0.1}
    grows = relation > single
    return {
        "gap": {
            "cloud_minus_edge": gap,
            "goals": {
                "gap_grows_with_complexity": grows,
                "edge_as_good_on_20_to_60_percent": 0.2 <= share <= 0.6,
            },
        }
    }


@pytest.mark.parametrize(
    ("designs", "chosen"),
    [
        ({"a": _design(0.1, 0.2, 0.3), "b": _design(0.1, 0.4, 0.3)}, "b"),  # steeper growth
        ({"a": _design(0.1, 0.2, 0.3), "b": _design(0.1, 0.4, 0.7)}, "a"),  # b: edge never wins
        ({"a": _design(0.3, 0.2, 0.3)}, None),  # the gap shrinks
    ],
)
def test_choose_keeps_the_design_whose_gap_grows(designs: dict, chosen: str | None) -> None:
    assert edge_designs.choose(designs) == chosen
