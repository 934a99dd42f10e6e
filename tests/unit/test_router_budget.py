"""BudgetController mechanics: steps, clip, warm start, counting, targets, persistence, locking."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from t2i_router.errors import InvalidRequest
from t2i_router.router.budget import (
    STATE_FILE,
    STATE_VERSION,
    BudgetConfig,
    BudgetController,
    eta_for_recovery,
    recovery_time,
    score_density,
)


def test_cloud_decisions_raise_lambda_and_edge_decisions_lower_it() -> None:
    c = BudgetController(BudgetConfig(target_rate=0.25, eta=0.1, lambda_init=0.5))
    assert c.observe([True]) == pytest.approx(0.5 + 0.1 * 0.75)
    assert c.observe([False]) == pytest.approx(0.575 - 0.1 * 0.25)


def test_lambda_is_clipped_to_zero_and_lambda_max_and_clips_are_counted() -> None:
    c = BudgetController(BudgetConfig(target_rate=0.5, eta=1.0, lambda_max=0.8, lambda_init=0.4))
    assert c.observe([True]) == 0.8
    assert c.observe([False, False]) == 0.0
    assert c.snapshot().clipped_updates == 2


def test_per_batch_update_steps_once_with_the_batch_sum() -> None:
    per_batch = BudgetController(BudgetConfig(target_rate=0.3, eta=0.01, update="batch"))
    per_batch.observe([True] * 4 + [False] * 6)
    assert per_batch.multiplier == pytest.approx(0.01 * (4 - 3))
    assert per_batch.snapshot().updates == 1
    per_request = BudgetController(BudgetConfig(target_rate=0.3, eta=0.01))
    per_request.observe([False] * 6 + [True] * 4)
    assert per_request.snapshot().updates == 10


def test_forced_and_fallback_decisions_move_neither_lambda_nor_the_rate() -> None:
    c = BudgetController(BudgetConfig(target_rate=0.3, eta=0.1, lambda_init=0.2))
    c.observe([True, True, False], counted=[False, False, True])
    snap = c.snapshot()
    assert snap.decisions == 1 and snap.cloud_decisions == 0 and snap.uncounted_decisions == 2
    assert snap.multiplier == pytest.approx(0.2 - 0.1 * 0.3)
    assert snap.running_rate == 0.0


def test_cost_mode_steps_by_normalised_cost_excess() -> None:
    config = BudgetConfig(mode="cost", target_cost=100.0, cost_scale=370.0, eta=0.5)
    c = BudgetController(config)
    c.observe([True, False], costs=[378.0, 7.7])
    expected = max(0.0, 0.5 * (378.0 - 100.0) / 370.0) + 0.5 * (7.7 - 100.0) / 370.0
    assert c.multiplier == pytest.approx(expected)
    assert c.snapshot().running_cost == pytest.approx((378.0 + 7.7) / 2)
    with pytest.raises(InvalidRequest, match="costs are required"):
        c.observe([True])


def test_warm_start_puts_lambda_at_the_quantile_that_meets_the_rate() -> None:
    scores = np.random.default_rng(0).normal(0.02, 0.03, size=2000)  # = the window
    c = BudgetController(BudgetConfig(target_rate=0.3))
    lam = c.warm_start(scores)
    assert np.mean(scores > lam) == pytest.approx(0.3, abs=1e-3)
    assert c.snapshot().warm_started


def test_cost_mode_warm_start_uses_the_cloud_share_of_the_target_cost() -> None:
    scores = np.linspace(0.0, 1.0, 1001)
    config = BudgetConfig(mode="cost", target_cost=25.0, edge_cost=10.0, cloud_cost=60.0)
    lam = BudgetController(config).warm_start(scores)
    assert lam == pytest.approx(0.7)  # share (25 - 10) / (60 - 10) = 0.3 above it


def test_warm_start_without_scores_keeps_lambda(caplog: pytest.LogCaptureFixture) -> None:
    c = BudgetController(BudgetConfig(lambda_init=0.1))
    with caplog.at_level(logging.WARNING):
        assert c.warm_start() == 0.1
    assert "no scores" in caplog.text


def test_identity_holds_exactly_across_a_warm_start_and_batches() -> None:
    rng = np.random.default_rng(1)
    c = BudgetController(BudgetConfig(target_rate=0.4, eta=0.003, update="batch"))
    c.warm_start(rng.normal(0.2, 0.1, 500))
    for _ in range(300):
        lam = c.multiplier
        c.observe(rng.normal(0.2, 0.1, size=int(rng.integers(1, 9))) > lam)
    c.warm_start(rng.normal(0.3, 0.1, 500))  # a jump mid-way is not a step
    for _ in range(300):
        c.observe(rng.normal(0.3, 0.1, size=4) > c.multiplier)
    s = c.snapshot()
    assert s.clipped_updates == 0
    assert s.excess_sum == pytest.approx((s.multiplier - s.multiplier_at_since) / s.eta)
    rate_error = s.running_rate - s.target_rate
    assert rate_error == pytest.approx(s.excess_sum / s.decisions)
    assert abs(rate_error) <= s.error_bound


def test_set_target_switches_mode_restarts_counts_and_warm_starts() -> None:
    clock = iter([100.0, 200.0, 300.0])
    c = BudgetController(BudgetConfig(target_rate=0.3), clock=lambda: next(clock))
    c.record_scores(np.linspace(0, 1, 101))
    c.observe([True, False, True])
    snap = c.set_target(target_rate=0.1)
    assert snap.decisions == 0 and snap.since_unix_s == 200.0
    assert snap.multiplier == pytest.approx(0.9)
    snap = c.set_target(target_cost=5.0, eta=0.01, multiplier=0.25, lambda_max=2.0)
    assert (snap.mode, snap.target_cost, snap.eta, snap.multiplier) == ("cost", 5.0, 0.01, 0.25)
    assert snap.lambda_max == 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_rate": 1.5}, "target_rate is 1.5"),
        ({"target_cost": -1.0}, "target_cost is -1.0"),
        ({"eta": 0.0}, "eta is 0.0"),
        ({"lambda_max": -2.0}, "lambda_max is -2.0"),
        ({"multiplier": 3.0}, "multiplier is 3.0"),
        ({"target_rate": 0.2, "target_cost": 3.0}, "not both"),
    ],
)
def test_set_target_rejects_bad_values_quoting_them(kwargs: dict, match: str) -> None:
    c = BudgetController(BudgetConfig())
    with pytest.raises(InvalidRequest, match=match):
        c.set_target(**kwargs)
    assert c.snapshot().target_rate == 0.3  # nothing half-applied


def test_config_rejects_bad_values() -> None:
    with pytest.raises(InvalidRequest, match="lambda_init is 2"):
        BudgetConfig(lambda_init=2.0, lambda_max=1.0)
    with pytest.raises(InvalidRequest, match="budget mode is 'cents'"):
        BudgetConfig(mode="cents")  # type: ignore[arg-type]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    config = BudgetConfig(target_rate=0.3, eta=0.05, state_dir=tmp_path, persist_interval_s=0)
    c = BudgetController(config)
    c.set_target(target_rate=0.2, multiplier=0.1)
    c.observe([True, False, False, True])
    before = c.snapshot()
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["version"] == STATE_VERSION and saved["multiplier"] == before.multiplier
    again = BudgetController(config)
    assert again.restored
    after = again.snapshot()
    assert after.multiplier == before.multiplier and after.target_rate == 0.2
    assert (after.decisions, after.cloud_decisions) == (4, 2)
    assert after.since_unix_s == before.since_unix_s and after.persisted


def test_persisting_is_throttled_by_the_interval(tmp_path: Path) -> None:
    c = BudgetController(BudgetConfig(state_dir=tmp_path, persist_interval_s=3600))
    assert c.flush()
    c.observe([True])
    assert json.loads((tmp_path / STATE_FILE).read_text())["decisions"] == 0
    c.flush()
    assert json.loads((tmp_path / STATE_FILE).read_text())["decisions"] == 1


def test_flush_due_writes_a_changed_state_once_the_interval_passed(tmp_path: Path) -> None:
    c = BudgetController(BudgetConfig(state_dir=tmp_path, persist_interval_s=0.5))
    path = tmp_path / STATE_FILE
    assert c.flush() and not c.flush_due()  # unchanged since the write
    c.observe([True])  # within the interval: not written by observe
    assert json.loads(path.read_text())["decisions"] == 0
    assert not c.flush_due()  # changed, but the interval has not passed
    time.sleep(0.55)
    assert c.flush_due()  # the last decision is written without another one coming
    assert json.loads(path.read_text())["decisions"] == 1
    time.sleep(0.55)
    assert not c.flush_due()  # nothing changed since


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    c = BudgetController(BudgetConfig(state_dir=tmp_path, persist_interval_s=0))
    for _ in range(20):
        c.observe([True, False])
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


def test_corrupt_or_foreign_state_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / STATE_FILE).write_text('{"version": 99}')
    with caplog.at_level(logging.WARNING):
        c = BudgetController(BudgetConfig(state_dir=tmp_path, lambda_init=0.05))
    assert not c.restored and c.multiplier == 0.05
    assert "version 99" in caplog.text
    (tmp_path / STATE_FILE).write_text("{not json")
    assert not BudgetController(BudgetConfig(state_dir=tmp_path)).restored


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_state_dir_logs_once_and_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.chmod(0o500)
    try:
        _check_unwritable(tmp_path, caplog)
    finally:
        tmp_path.chmod(0o700)


def test_state_dir_that_is_a_file_logs_once_and_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    _check_unwritable(blocker / "state", caplog)


def _check_unwritable(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = BudgetController(BudgetConfig(state_dir=state_dir, persist_interval_s=0, eta=0.1))
    with caplog.at_level(logging.WARNING, logger="t2i_router.router.budget"):
        for _ in range(5):
            c.observe([True])
        assert not c.flush()
    warnings = [r for r in caplog.records if "cannot write the budget state" in r.getMessage()]
    assert len(warnings) == 1 and str(state_dir) in warnings[0].getMessage()
    snap = c.snapshot()
    assert snap.decisions == 5 and not snap.persisted and snap.multiplier > 0


def test_concurrent_observers_lose_no_decision() -> None:
    c = BudgetController(BudgetConfig(target_rate=0.5, eta=1e-4, lambda_init=0.5))

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(500):
            c.observe(rng.uniform(size=2) < 0.5)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.snapshot()
    assert s.decisions == 4000 and s.updates == 4000
    expected = s.multiplier_at_since + s.eta * s.excess_sum
    assert s.multiplier == pytest.approx(expected)
    assert s.excess_sum == pytest.approx(s.cloud_decisions - 0.5 * s.decisions)


def test_eta_and_recovery_time_are_inverse_through_the_density() -> None:
    assert recovery_time(eta_for_recovery(200.0, 8.0), 8.0) == pytest.approx(200.0)
    scores = np.random.default_rng(3).normal(0.0, 0.05, 20000)
    expected = math.exp(-0.5) / (0.05 * math.sqrt(2 * math.pi))  # N(0, 0.05) pdf at 0.05
    assert score_density(scores, 0.05) == pytest.approx(expected, rel=0.05)
    with pytest.raises(InvalidRequest, match="must both be > 0"):
        eta_for_recovery(0.0, 1.0)
