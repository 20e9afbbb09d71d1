"""Shared bases of the files in ``configs/``: the tiny CPU run, the matched small CPU trio and the GPU recipe.

They live in the package so that config files import them normally (a config file is loaded
from its path, not as part of a package, so it cannot import a neighbouring file).
"""

from __future__ import annotations

from mhc_jax.models import ModelConfig
from mhc_jax.train.config import TrainConfig


def tiny_cpu(**changes) -> TrainConfig:
  """Seconds per run on a laptop CPU: what CI and the tests train (``changes``: e.g. the mesh)."""
  return TrainConfig(
      model=ModelConfig(connection="mhc", num_streams=4, num_layers=2, d_model=64, num_heads=2),
      seq_len=64, batch_size=8,
      learning_rate=3e-3, warmup_steps=10, train_steps=60,
      log_every=5, eval_every=20, eval_batches=4, checkpoint_every=20,
  ).replace(**changes)


def small_cpu(connection: str) -> TrainConfig:
  """The small CPU trio (residual / HC / mHC differ only in ``connection``): 5-9 minutes each on
  2 CPU cores."""
  return TrainConfig(
      # Unrolled blocks: on CPU, lax.scan's stacked saved activations (zero-filled buffers,
      # dynamic-update-slice writes, dynamic-slice reads) cost 7% of the residual step and
      # 20% of the mHC step at this size. Scan is for deep models' compile times.
      model=ModelConfig(connection=connection, num_streams=4, num_layers=4, d_model=256, num_heads=4,
                        scan_layers=False),
      seq_len=256, batch_size=16,
      learning_rate=2e-3, warmup_steps=30, train_steps=300,
      log_every=10, eval_every=50, eval_batches=16, checkpoint_every=50,
  )


def gpu(connection: str, d_model: int, num_layers: int, num_heads: int,
        learning_rate: float) -> TrainConfig:
  """One GPU node, the paper's recipe (AdamW 0.9/0.95, wd 0.1, warmup, step decay at 80% / 90% by
  0.316 / 0.1), bf16 streams and activations, remat, n = 4."""
  return TrainConfig(
      model=ModelConfig(connection=connection, num_streams=4, num_layers=num_layers, d_model=d_model,
                        num_heads=num_heads, dtype="bfloat16", remat=True),
      seq_len=1024, batch_size=64,
      learning_rate=learning_rate, warmup_steps=2000, train_steps=50_000,
      log_every=50, eval_every=1000, eval_batches=32, checkpoint_every=1000,
  )
