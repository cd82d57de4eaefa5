"""Lightning + Hydra experiments for the deep-learning primer."""
