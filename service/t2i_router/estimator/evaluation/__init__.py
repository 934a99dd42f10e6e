"""Evaluate routing: deferral curves, PGR and APGR, paired bootstrap intervals, noise ceiling.

Pure numpy (matplotlib only inside the plot functions); imports neither torch, grpc nor
tritonclient, so every figure can be recomputed from label arrays alone.

Inputs: ``quality`` (N, M, S) is the mean alignment of the image choice m made for test prompt n
with seed s; the quality of a choice on a prompt is its mean over seeds (`choice_quality`). A
two-choice method is a routing score per prompt (N,), higher = send to the cloud; an M-choice
method is a predicted utility per prompt and choice (N, M), routed by argmax_m u_m - lambda c_m.

Definitions follow RouteLLM (Ong et al. 2024; lm-sys/RouteLLM at 0b64fda,
``routellm/evals/evaluate.py``, ``generate_results``; ``routellm/evals/benchmarks.py``,
``Benchmark.evaluate``):

- Routing at a cloud rate: prompts whose score reaches a threshold go to the strong model
  (``benchmarks.py``: ``strong_win_rates >= threshold``), so tied scores move together.
- PGR(r) = (Q(r) - Q_weak) / (Q_strong - Q_weak), the share of the strong model's gain recovered
  (``evaluate.py``, ``pct_call_metric``: the target ``pct * (strong - weak) + weak``).
- APGR = (AUC - weak_AUC) / (strong_AUC - weak_AUC), each AUC a trapezoid over the strong-call
  share in [0, 1] (``evaluate.py``, ``auc_metric`` and ``apgr_metric``); this equals the trapezoid
  of PGR over the same grid, which is how it is computed here.
- Calls to reach x% of the gain (CPT(x%), columns "20% qual", "50% qual", "80% qual" of
  ``pct_call_metric``): the strong-call share at which Q(r) first reaches
  Q_weak + x (Q_strong - Q_weak). Calls saved vs random = 1 - CPT_method(50%) / CPT_random(50%)
  with CPT_random(50%) = 0.5 (the paper's "x% fewer calls than random"; RouteT2I reports the same
  figure).
- The random router draws a uniform score per prompt (``routellm/routers/routers.py``,
  ``RandomRouter``); in expectation it gives PGR(r) = r, computed here analytically.

Where this differs from RouteLLM, on purpose: RouteLLM evaluates at score deciles and interpolates
CPT with ``np.interp`` over accuracy, which assumes the curve rises monotonically; here Q(r) is
exact at any rate (a fractional prompt count interpolates linearly between whole counts, and a
block of tied scores fills evenly: the expectation over random tie orders, deterministic and
independent of prompt order), and CPT is the first crossing of the exact curve.

This package re-exports the public names of its modules, split by concern: ``inputs``
(validation, the rate grid, quality per choice), ``curves`` (deferral and cost-quality curves),
``bootstrap`` (paired bootstrap intervals), ``noise`` (noise ceiling, gap structure) and
``report`` (JSON, markdown, plots).
"""

from __future__ import annotations

from t2i_router.estimator.evaluation.bootstrap import (
    BootstrapResult,
    Interval,
    bootstrap_metrics,
    format_interval,
)
from t2i_router.estimator.evaluation.curves import (
    CostQualityCurve,
    DeferralCurve,
    FixedChoiceComparison,
    compare_to_fixed,
    cost_quality_curve,
    deferral_curve,
    random_deferral_curve,
)
from t2i_router.estimator.evaluation.inputs import (
    METRIC_LABELS,
    METRIC_NAMES,
    RATE_GRID_POINTS,
    choice_quality,
    default_rates,
    edge_cloud_quality,
)
from t2i_router.estimator.evaluation.noise import (
    SplitHalfReliability,
    gap_structure,
    split_half_oracle,
    split_half_reliability,
)
from t2i_router.estimator.evaluation.report import (
    markdown_table,
    plot_cost_quality,
    plot_pgr_curves,
    write_json,
    write_markdown,
)

__all__ = [
    "METRIC_LABELS",
    "METRIC_NAMES",
    "RATE_GRID_POINTS",
    "BootstrapResult",
    "CostQualityCurve",
    "DeferralCurve",
    "FixedChoiceComparison",
    "Interval",
    "SplitHalfReliability",
    "bootstrap_metrics",
    "choice_quality",
    "compare_to_fixed",
    "cost_quality_curve",
    "default_rates",
    "deferral_curve",
    "edge_cloud_quality",
    "format_interval",
    "gap_structure",
    "markdown_table",
    "plot_cost_quality",
    "plot_pgr_curves",
    "random_deferral_curve",
    "split_half_oracle",
    "split_half_reliability",
    "write_json",
    "write_markdown",
]
