"""lambda* on the policy's own outcome: bisection, the outcome window, and why the warm start
needs it with four choices (a two-engine score quantile misses the cheaper cloud choice)."""

from __future__ import annotations

import numpy as np
import pytest
from router_fakes import make_policy

from t2i_router.errors import InvalidRequest
from t2i_router.router.budget import BudgetConfig, BudgetController
from t2i_router.router.calibration import OutcomeWindow, calibrate_budget, solve_multiplier


def four_choice_utilities(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Utilities (N, 4) where the cheaper cloud choice is nearly as good as the dearer one, as
    with the committed engines (cloud_large@10 ~ cloud_large@20): the argmax often picks it."""
    rng = np.random.default_rng(seed)
    edge8 = rng.uniform(0.6, 0.9, n)
    edge4 = edge8 - rng.uniform(0.0, 0.05, n)
    cloud20 = edge8 + rng.normal(0.05, 0.05, n)
    cloud10 = cloud20 - rng.uniform(0.0, 0.01, n)
    return np.stack([edge4, edge8, cloud10, cloud20], axis=1)


def test_calibration_finds_the_lambda_that_meets_the_target_and_the_eta_for_tau():
    scores = np.linspace(-0.1, 0.1, 1001)  # uniform: share(lam) = (0.1 - lam) / 0.2

    def share(lam: float) -> float:
        return float(np.mean(scores > lam))

    c = calibrate_budget(share, 0.3, tau_decisions=20, lambda_max=1.0, max_eta=1.0)
    assert c.multiplier == pytest.approx(0.04, abs=1e-3)
    assert c.slope == pytest.approx(5.0, rel=0.02)
    assert c.eta == pytest.approx(1 / (20 * 5.0), rel=0.02)
    assert calibrate_budget(share, 0.3, 20, 1.0, max_eta=1e-3).eta == 1e-3
    # a share the target cannot reach stays at a bound
    assert calibrate_budget(lambda lam: 0.0, 0.3, 20, 1.0, 1.0).multiplier == 0.0
    with pytest.raises(InvalidRequest, match="tau_decisions is 0"):
        calibrate_budget(share, 0.3, 0, 1.0, 1.0)


def test_solve_multiplier_returns_the_bounds_when_the_target_is_out_of_reach():
    assert solve_multiplier(lambda lam: 1.0, 0.3, 2.0) == 2.0  # even lambda_max overshoots
    assert solve_multiplier(lambda lam: 0.1, 0.3, 2.0) == 0.0  # lambda = 0 already meets it
    lam = solve_multiplier(lambda lam: 1.0 - lam, 0.25, 2.0)
    assert lam == pytest.approx(0.75, abs=1e-9)
    with pytest.raises(InvalidRequest, match="lambda_max is 0"):
        solve_multiplier(lambda lam: 0.0, 0.3, 0.0)


def test_policy_outcome_is_non_increasing_in_lambda_and_matches_decide():
    policy = make_policy()
    u = four_choice_utilities(500)
    grid = np.linspace(0.0, 1.0, 101)
    outcomes = np.array([policy.outcome(u, lam) for lam in grid])  # (101, 2)
    assert (np.diff(outcomes[:, 0]) <= 0).all() and (np.diff(outcomes[:, 1]) <= 1e-12).all()
    assert outcomes[0, 0] > 0.5 and outcomes[-1, 0] < 0.1
    q = np.random.default_rng(1).uniform(size=(300, 4, len(policy.config.metric_weights)))
    for lam in (0.0, 0.05, 0.2):
        d = policy.decide(q, lam)
        share, cost = policy.outcome(policy.utilities(q), lam)
        assert share == pytest.approx(d.cloud.mean()) and cost == pytest.approx(d.costs.mean())
    with pytest.raises(InvalidRequest, match="expected"):
        policy.outcome(u[:, :3], 0.0)


def test_outcome_window_keeps_the_last_rows_and_skips_forced_ones():
    policy = make_policy()
    window = OutcomeWindow(policy.outcome, size=3)
    with pytest.raises(InvalidRequest, match="empty"):
        window.at(0.0)
    window.add(np.array([[0.1, 0.2, 0.3, 0.4], [np.nan] * 4]))  # a forced row has NaN utilities
    assert len(window) == 1
    window.add(four_choice_utilities(5))
    assert len(window) == 3
    with pytest.raises(InvalidRequest, match="size is 0"):
        OutcomeWindow(policy.outcome, size=0)


@pytest.mark.parametrize("target", [0.2, 0.3, 0.5])
def test_warm_start_on_the_outcome_meets_the_target_where_the_score_quantile_misses(target):
    policy = make_policy()
    u = four_choice_utilities()
    scores = policy.scores_from_utilities(u)

    quantile_only = BudgetController(BudgetConfig(target_rate=target))
    lam_q = quantile_only.warm_start(scores)
    missed = abs(policy.outcome(u, lam_q)[0] - target)

    controller = BudgetController(BudgetConfig(target_rate=target))
    window = OutcomeWindow(policy.outcome, size=len(u))
    window.add(u)
    controller.outcome_model = window.at
    lam = controller.warm_start(scores)
    share = policy.outcome(u, lam)[0]

    assert abs(share - target) <= 2 / len(u)  # met to one or two prompts of 2,000
    assert missed > 0.05  # the two-engine quantile misses cloud_large@10's share
    assert controller.snapshot().warm_started


def test_warm_start_on_the_outcome_meets_a_target_cost():
    policy = make_policy()
    u = four_choice_utilities()
    costs = policy.outcome(u, 0.0)[1], policy.outcome(u, 1.0)[1]
    target_cost = float(np.mean(costs))
    controller = BudgetController(
        BudgetConfig(mode="cost", target_cost=target_cost, edge_cost=0.96, cloud_cost=18.9)
    )
    window = OutcomeWindow(policy.outcome, size=len(u))
    window.add(u)
    controller.outcome_model = window.at
    lam = controller.warm_start(policy.scores_from_utilities(u))
    assert policy.outcome(u, lam)[1] <= target_cost
    assert policy.outcome(u, max(lam - 1e-6, 0.0))[1] > target_cost


def test_an_empty_window_falls_back_to_the_score_quantile():
    policy = make_policy()
    scores = policy.scores_from_utilities(four_choice_utilities(400))
    controller = BudgetController(BudgetConfig(target_rate=0.3))
    controller.outcome_model = OutcomeWindow(policy.outcome, size=10).at
    lam = controller.warm_start(scores)
    assert lam == pytest.approx(max(float(np.quantile(scores, 0.7)), 0.0))
