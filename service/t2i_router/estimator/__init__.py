"""Per-prompt quality estimation for routing: models, baselines, labels and their evaluation."""
