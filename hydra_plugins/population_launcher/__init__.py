"""Hydra launcher plugin: a sweep trained as populations (src/population.py)."""
