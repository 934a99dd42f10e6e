"""The quality estimator: labels, the token-selection MoE, baselines and evaluation."""
