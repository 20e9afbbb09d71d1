"""Seconds per run on a laptop CPU: what CI and the tests train."""

from mhc_jax.models import ModelConfig
from mhc_jax.train.config import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      model=ModelConfig(connection="mhc", num_streams=4, num_layers=2, d_model=64, num_heads=2),
      seq_len=64, batch_size=8,
      learning_rate=3e-3, warmup_steps=10, train_steps=60,
      log_every=5, eval_every=20, eval_batches=4, checkpoint_every=20,
  )
