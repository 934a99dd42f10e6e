"""The budget-control benchmark runs small and meets its goals."""

from __future__ import annotations

import json
from pathlib import Path

import budget_control


def test_budget_control_benchmark_meets_its_goals_and_writes_json_and_png(tmp_path: Path) -> None:
    summary = budget_control.main(["--out", str(tmp_path), "--n", "3000", "--runs", "8"])
    saved = json.loads((tmp_path / "budget_control.json").read_text())
    assert saved["goals"] == summary["goals"]
    assert (tmp_path / "budget_control.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    met = {name: goal["met"] for name, goal in summary["goals"].items()}
    assert met.pop("rate_error_at_10000") is None  # not measured at n=3000
    assert all(met.values()), summary["goals"]
    assert summary["adversarial"]["clipped_updates"] == 0
    assert (tmp_path / "large_shift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    large = summary["large_shift"]
    assert large["lambda_star_after"] > 10 * large["lambda_star_before"]
    assert large["dual_only"]["in_tau"] > 2 * large["tracked"]["in_tau"]  # tracking is why
