"""The budget's tracking feed-forward (`budget`, "Tracking"): lambda = theta + kappa.

theta is lambda* re-solved on the latest decisions, kappa the dual steps' integral of the excess.
After a large shift of the score distribution (lambda* moves 25x, where the density is far
lower) tracking recovers within 2.5 tau of the configured recovery time, where the dual steps
alone take many times longer; the identity and the rate bound hold with it, on any traffic.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from t2i_router.errors import InvalidRequest
from t2i_router.router import simulate as sim
from t2i_router.router.budget import (
    BudgetConfig,
    BudgetController,
    eta_for_recovery,
    score_density,
)
from t2i_router.router.budget_store import BudgetState, track_state
from t2i_router.router.calibration import OutcomeWindow
from t2i_router.router.policy import Choice, Policy, PolicyConfig

RATE, TAU = 0.3, 50.0


def state(multiplier: float, at_since: float, lambda_max: float = 1.0) -> BudgetState:
    return BudgetState(
        mode="rate",
        target_rate=RATE,
        target_cost=0.0,
        eta=0.01,
        lambda_max=lambda_max,
        multiplier=multiplier,
        decisions=0,
        cloud_decisions=0,
        uncounted_decisions=0,
        cost_sum=0.0,
        since_unix_s=0.0,
        updates=0,
        clipped_updates=0,
        excess_sum=0.0,
        multiplier_at_since=at_since,
        warm_started=True,
    )


unit = st.floats(0.0, 1.0)


@given(lam=unit, at_since=unit, theta=st.floats(-2.0, 3.0))
def test_a_track_keeps_kappa_and_lambda_1_in_range(lam: float, at_since: float, theta: float):
    s = track_state(state(lam, at_since), theta)
    kappa = lam - at_since
    assert 0.0 <= s.multiplier <= 1.0
    assert s.multiplier - s.multiplier_at_since == pytest.approx(kappa, abs=1e-12)
    assert -1e-12 <= s.multiplier_at_since <= 1.0 + 1e-12  # the bound's argument needs this
    if 0.0 <= theta + kappa <= 1.0 and 0.0 <= theta <= 1.0:
        assert s.multiplier == pytest.approx(theta + kappa)


def two_mixes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scores whose lambda* moves 0.013 -> 0.35 at n (as single/group -> pair/relation did
    on the committed estimator), the density at the new lambda* ~10x lower."""
    before = rng.normal(0.0, 0.025, n)
    after = rng.normal(0.25, 0.2, n)
    return np.concatenate([before, after])


def shift_controller(track_every: int) -> tuple[BudgetController, float, float, float]:
    rng = np.random.default_rng(0)
    calibration = rng.normal(0.0, 0.025, 2000)
    before = float(np.quantile(calibration, 1 - RATE))
    after = float(np.quantile(rng.normal(0.25, 0.2, 20_000), 1 - RATE))
    eta = eta_for_recovery(TAU, score_density(calibration, before))
    config = BudgetConfig(
        target_rate=RATE, eta=eta, track_every=track_every, track_window=int(2 * TAU)
    )
    controller = BudgetController(config)
    controller.warm_start(calibration)
    return controller, eta, before, after


def mean_recovery(track_every: int, runs: int = 10, n: int = 1500) -> tuple[float, float]:
    """Decisions until the mean lambda path is 90% recovered, and its mean over the tail."""
    paths = []
    for seed in range(runs):
        controller, _, before, after = shift_controller(track_every)
        trace = sim.run_stream(controller, two_mixes(np.random.default_rng(seed + 1), n))
        paths.append(trace.multiplier[n:])
    path = np.mean(paths, axis=0)
    crossed = path >= before + 0.9 * (after - before)
    return (float(np.argmax(crossed)) if crossed.any() else np.inf), float(path[-300:].mean())


def test_tracking_recovers_from_a_25x_shift_within_2_5_tau_where_dual_steps_alone_cannot():
    _, _, before, after = shift_controller(10)
    assert after / before > 15
    tracked, tail = mean_recovery(track_every=10)
    assert tracked <= 2.5 * TAU
    assert abs(tail - after) <= 0.05 * (after - before)
    untracked, _ = mean_recovery(track_every=0)
    assert untracked > 2 * tracked  # the test can fail: without the feed-forward it is slow


def test_with_tracking_the_identity_holds_and_the_rate_is_held() -> None:
    controller, eta, _, _ = shift_controller(10)
    rng = np.random.default_rng(3)
    trace = sim.run_stream(controller, two_mixes(rng, 3000))
    s = controller.snapshot()
    assert controller.tracks == 6000 // 10  # the warm start's scores fill the window at once
    assert s.clipped_updates == 0
    assert s.excess_sum == pytest.approx((s.multiplier - s.multiplier_at_since) / eta)
    assert abs(trace.running_rate[-1] - RATE) <= 0.002
    assert abs(s.running_rate - RATE) <= s.error_bound


def test_the_rate_bound_holds_with_tracking_on_an_adversarial_stream() -> None:
    """The adversary sees lambda and feeds the window scores that drag theta both ways."""
    eta, lambda_max = 0.01, 0.5
    c = BudgetController(
        BudgetConfig(
            target_rate=RATE, eta=eta, lambda_max=lambda_max, track_every=5, track_window=20
        )
    )
    worst = sim.adversarial_stream(c, 20_000, np.random.default_rng(7), random_share=0.2)
    s = c.snapshot()
    assert c.tracks > 1000
    assert s.excess_sum == pytest.approx((s.multiplier - s.multiplier_at_since) / eta)
    assert worst <= 1.0


def test_tracking_waits_for_a_full_window_and_is_off_at_zero() -> None:
    c = BudgetController(BudgetConfig(target_rate=RATE, eta=0.01, track_every=5, track_window=50))
    for _ in range(9):
        c.record_scores(np.full(5, 0.4))
        c.observe(np.zeros(5, bool))
    assert c.tracks == 0  # 45 scores: the window is not full
    c.record_scores(np.full(5, 0.4))
    c.observe(np.zeros(5, bool))
    assert c.tracks == 1
    off = BudgetController(BudgetConfig(target_rate=RATE, eta=0.01))
    off.record_scores(np.full(500, 0.4))
    off.observe(np.zeros(500, bool))
    assert off.tracks == 0


def test_tracking_solves_on_the_policys_outcome_on_the_latest_decisions() -> None:
    edge, cloud = Choice("edge", "edge", 8, 1.0), Choice("cloud", "cloud", 20, 10.0)
    policy = Policy(PolicyConfig((edge, cloud), (1.0,), edge.name, cloud.name))
    window = OutcomeWindow(policy.outcome, size=1000)
    c = BudgetController(BudgetConfig(target_rate=0.5, eta=1e-6, track_every=10, track_window=20))
    c.recent_outcome_model = lambda lam: window.at(lam, last=20)
    old = np.stack([np.zeros(500), np.full(500, 0.9)], axis=1)  # every prompt gains 0.9
    window.add(old)
    gains = np.linspace(0.0, 0.2, 20)  # the latest 20: half of them gain more than ~0.1
    window.add(np.stack([np.zeros(20), gains], axis=1))
    c.observe(np.zeros(10, bool))
    lam = c.multiplier
    assert policy.outcome(window.rows()[-20:], lam)[0] == pytest.approx(0.5)
    assert lam < 0.2  # solved on the latest rows, not on the old ones


def test_outcome_window_last_needs_that_many_rows_and_config_checks_tracking() -> None:
    edge, cloud = Choice("edge", "edge", 8, 1.0), Choice("cloud", "cloud", 20, 10.0)
    window = OutcomeWindow(Policy(PolicyConfig((edge, cloud), (1.0,), "edge", "cloud")).outcome, 9)
    window.add(np.zeros((3, 2)))
    with pytest.raises(InvalidRequest, match="holds 3 decisions, fewer than 5"):
        window.at(0.1, last=5)
    assert window.at(0.1, last=3) == window.at(0.1)
    with pytest.raises(InvalidRequest, match="track_every is -1"):
        BudgetConfig(track_every=-1)
    with pytest.raises(InvalidRequest, match="track_window is 3000"):
        BudgetConfig(track_window=3000)
