"""Seconds per run on a laptop CPU: what CI and the tests train (data parallel over every device)."""

from mhc_jax.train.presets import tiny_cpu


def get_config():
  return tiny_cpu()
