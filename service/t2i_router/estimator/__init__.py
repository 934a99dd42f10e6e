"""The quality estimator: labels, the token-selection MoE, baselines and evaluation."""

from t2i_router.errors import Unavailable

# Where `t2i-router estimator train` writes the model and `predict` and the router read it.
DEFAULT_MODEL_DIR = "models/quality_estimator"


class EstimatorNotFoundError(Unavailable):
    """A quality-estimator folder is missing or holds no model (train one, or point to one)."""
