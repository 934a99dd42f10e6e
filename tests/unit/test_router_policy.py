"""Routing policy: utilities, the score in multiplier units, argmax with costs, forced targets."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_router.errors import InvalidRequest
from t2i_router.router.policy import Choice, Policy, PolicyConfig, prs_alpha

EDGE = Choice("edge_small@8", "edge_small", 8, cost=7.7)
EDGE_FEW = Choice("edge_small@4", "edge_small", 4, cost=3.8)
CLOUD = Choice("cloud_large@20", "cloud_large", 20, cost=378.0)
CLOUD_FEW = Choice("cloud_large@10", "cloud_large", 10, cost=189.0)


def two_engine_policy(weights=(0.5, 0.5)) -> Policy:
    return Policy(PolicyConfig((EDGE, CLOUD), weights, EDGE.name, CLOUD.name))


def test_utilities_are_quality_weighted_by_metric() -> None:
    policy = two_engine_policy((0.25, 0.75))
    q = np.array([[[0.2, 0.6], [1.0, 0.0]]])  # (1, 2, 2)
    np.testing.assert_allclose(policy.utilities(q), [[0.5, 0.25]])


def test_score_is_the_multiplier_at_which_the_prompt_switches() -> None:
    policy = two_engine_policy()
    rng = np.random.default_rng(0)
    q = rng.uniform(size=(200, 2, 2))
    scores = policy.scores(q)
    for lam in (0.0, 0.05, 0.2):
        decided = policy.decide(q, lam)
        np.testing.assert_array_equal(decided.cloud, scores > lam)
    # just below / above its own score, a prompt flips
    n = int(np.argmax(scores))
    assert scores[n] > 0
    assert policy.decide(q[n : n + 1], scores[n] - 1e-9).cloud[0]
    assert not policy.decide(q[n : n + 1], scores[n] + 1e-9).cloud[0]


def test_default_cost_scale_is_the_span_so_score_equals_the_utility_gap() -> None:
    policy = two_engine_policy()
    q = np.random.default_rng(1).uniform(size=(10, 2, 2))
    decided = policy.decide(q, 0.0)
    assert policy.config.c_scale == pytest.approx(CLOUD.cost - EDGE.cost)
    np.testing.assert_allclose(decided.scores, decided.utility_gaps)


def test_an_explicit_cost_scale_rescales_scores_into_its_multiplier_units() -> None:
    config = PolicyConfig((EDGE, CLOUD), (1.0,), EDGE.name, CLOUD.name, cost_scale=1.0)
    policy = Policy(config)
    q = np.array([[[0.5], [0.6]]])
    assert policy.scores(q)[0] == pytest.approx(0.1 / (CLOUD.cost - EDGE.cost))


def test_ties_go_to_the_cheaper_choice() -> None:
    policy = two_engine_policy()
    q = np.full((3, 2, 2), 0.5)  # equal utilities
    assert not policy.decide(q, 0.0).cloud.any()
    # cloud listed first: still the cheaper edge wins ties
    reversed_policy = Policy(PolicyConfig((CLOUD, EDGE), (0.5, 0.5), EDGE.name, CLOUD.name))
    decided = reversed_policy.decide(q, 0.0)
    assert [decided.choice(i).name for i in range(3)] == [EDGE.name] * 3


def test_argmax_over_many_choices_trades_utility_against_normalised_cost() -> None:
    choices = (EDGE_FEW, EDGE, CLOUD_FEW, CLOUD)
    policy = Policy(PolicyConfig(choices, (1.0,), EDGE.name, CLOUD.name))
    q = np.array([[[0.60], [0.70], [0.78], [0.80]]])  # (1, 4, 1)
    span = CLOUD.cost - EDGE.cost
    for lam in (0.0, 0.05, 0.2, 1.0, 10.0):
        objective = q[0, :, 0] - lam * np.array([c.cost for c in choices]) / span
        decided = policy.decide(q, lam)
        assert decided.index[0] == int(np.argmax(objective))
        np.testing.assert_allclose(decided.objectives[0], objective)
    assert policy.decide(q, 0.0).choice(0) == CLOUD
    assert policy.decide(q, 1.0).choice(0) == EDGE
    assert policy.decide(q, 10.0).choice(0) == EDGE_FEW
    assert policy.decide(q, 0.05).choice(0).name == "cloud_large@10"


def test_forced_targets_bypass_scoring_and_need_no_prediction() -> None:
    policy = two_engine_policy()
    q = np.zeros((2, 2, 2))
    q[:, 1] = 1.0  # cloud hugely better
    forced = policy.decide(q, 0.0, ["edge", "auto"])
    assert forced.forced.tolist() == [True, False]
    assert forced.cloud.tolist() == [False, True]
    blind = policy.decide(None, 0.0, ["cloud", "edge"])
    assert blind.cloud.tolist() == [True, False] and blind.forced.all()
    assert [blind.choice(i) for i in range(2)] == [CLOUD, EDGE]
    np.testing.assert_array_equal(blind.costs, [CLOUD.cost, EDGE.cost])
    with pytest.raises(InvalidRequest, match="required unless every target is forced"):
        policy.decide(None, 0.0, ["cloud", "auto"])


def test_prs_threshold_is_the_same_rule_for_two_engines() -> None:
    policy = two_engine_policy((0.3, 0.7))
    rng = np.random.default_rng(2)
    d = rng.uniform(size=(500, 2))  # P(edge better) per metric
    q = np.stack([d, 1.0 - d], axis=1)  # (N, 2, 2): edge row D_k, cloud row 1 - D_k
    prs = d @ np.array([0.3, 0.7])
    for lam in (0.0, 0.1, 0.4):
        alpha = prs_alpha(lam, CLOUD.cost - EDGE.cost, policy.config.c_scale)
        np.testing.assert_array_equal(policy.decide(q, lam).cloud, prs < alpha)
    assert prs_alpha(0.0, 1.0, 1.0) == 0.5


@pytest.mark.parametrize(
    ("q", "match"),
    [
        (np.zeros((2, 3, 2)), r"shape \(2, 3, 2\), expected \(N, 2, 2\)"),
        (np.full((1, 2, 2), 1.5), "must lie in \\[0, 1\\]; found 1.5"),
        (np.full((1, 2, 2), np.nan), "must lie in \\[0, 1\\]"),
    ],
)
def test_bad_predictions_are_rejected_quoting_the_value(q: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        two_engine_policy().decide(q, 0.0)


def test_bad_configs_and_multipliers_are_rejected() -> None:
    with pytest.raises(InvalidRequest, match="must cost more"):
        PolicyConfig((EDGE, CLOUD), (1.0,), CLOUD.name, EDGE.name)
    with pytest.raises(InvalidRequest, match="not one of"):
        PolicyConfig((EDGE, CLOUD), (1.0,), "nope", CLOUD.name)
    with pytest.raises(InvalidRequest, match="uniquely named"):
        PolicyConfig((EDGE, EDGE), (1.0,), EDGE.name, EDGE.name)
    with pytest.raises(InvalidRequest, match="weights"):
        PolicyConfig((EDGE, CLOUD), (0.0, 0.0), EDGE.name, CLOUD.name)
    with pytest.raises(InvalidRequest, match="multiplier is -1"):
        two_engine_policy().decide(np.zeros((1, 2, 2)), -1.0)
    with pytest.raises(InvalidRequest, match="target is 'gpu'"):
        two_engine_policy().decide(np.zeros((1, 2, 2)), 0.0, "gpu")  # type: ignore[arg-type]
