"""gap_scenarios shifts the labelled edge by level and concept and measures the result."""

from __future__ import annotations

import argparse
import json
import re

import gap_scenarios
import numpy as np
import pytest
from test_gap_structure import _write_labels


def test_scenarios_move_the_gap_where_they_say(tmp_path):
    _write_labels(tmp_path / "labels")  # the cloud gains 0.2 on relation prompts only
    out = tmp_path / "scen"
    argv = ["--labels", str(tmp_path / "labels"), "--out", str(out)]
    argv += ["--scenario", "closed:relation=0.2", "--scenario", "rare red:red=-0.3"]
    report = gap_scenarios.main(argv)
    rows = report["scenarios"]
    assert rows["as labelled"]["mean_gap"] == pytest.approx(0.05, abs=0.01)
    assert abs(rows["closed"]["mean_gap"]) < 0.01  # the edge caught up on relations
    assert rows["closed"]["split_half_reliability"] < 0.5  # nothing left but noise
    # red single/group prompts lose 0.3; red two-group prompts keep their level's (none)
    rare = rows["rare red"]
    assert rare["share_edge_within"] < rows["as labelled"]["share_edge_within"]
    assert rare["mean_gap"] > rows["as labelled"]["mean_gap"]
    assert json.loads(out.with_suffix(".json").read_text())["n_prompts"] == 40
    assert "| rare red | red -0.3 |" in out.with_suffix(".md").read_text()


def test_shifted_adds_level_shifts_and_puts_concept_shifts_on_simple_prompts_only():
    from t2i_router.world import parse_prompt

    specs = [parse_prompt(t) for t in ("a red circle", "a red circle and a blue square")]
    levels = np.array([s.complexity for s in specs])
    edge = np.full((2, 3), 0.5)
    out = gap_scenarios.shifted(edge, levels, specs, {"single": 0.1, "pair": -0.1, "red": -0.4})
    assert np.allclose(out[0], 0.1) and np.allclose(out[1], 0.4)  # concept replaces level
    assert np.allclose(gap_scenarios.shifted(edge, levels, specs, {"pair": 0.9})[1], 1.0)


@pytest.mark.parametrize(
    ("bad", "quoted"),
    [
        ("nocolon", "'nocolon' is not NAME:KEY=SHIFT"),
        ("x:pink=0.1", "'pink=0.1' in 'x:pink=0.1': KEY must be"),
        ("x:pair=lots", "'lots' is not a number"),
        (":pair=0.1", "':pair=0.1' is not NAME:KEY=SHIFT"),
    ],
)
def test_bad_scenarios_are_rejected_quoting_the_text(bad, quoted):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(quoted)):
        gap_scenarios.parse_scenario(bad)
