"""Shared base of the matched small CPU trio (residual / HC / mHC): 5-9 minutes each on 2 CPU cores."""

from mhc_jax.models import ModelConfig
from mhc_jax.train.config import TrainConfig


def small_cpu(connection: str) -> TrainConfig:
  return TrainConfig(
      model=ModelConfig(connection=connection, num_streams=4, num_layers=4, d_model=256, num_heads=4),
      seq_len=256,
      batch_size=16,
      learning_rate=2e-3,
      warmup_steps=30,
      train_steps=300,
      log_every=10,
      eval_every=50,
      eval_batches=16,
      checkpoint_every=50,
  )
