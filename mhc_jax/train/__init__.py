"""Training: TrainConfig and presets, the corpus, data (grain), optimizer, orbax checkpoints, the loop,
plots, sampling.

The entry point is :func:`mhc_jax.train.trainer.train` (``experiments/train.py`` calls it).
"""
