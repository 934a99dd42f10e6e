"""The quality estimator: labels, the token-selection MoE, baselines and evaluation."""

# Where `t2i-router estimator train` writes the model and `predict` and the router read it.
DEFAULT_MODEL_DIR = "models/quality_estimator"
