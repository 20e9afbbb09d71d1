"""Shared base of the GPU configs: the paper's recipe (AdamW 0.9/0.95, wd 0.1, warmup, step decay
at 80% / 90% by 0.316 / 0.1), bf16 streams and activations, remat, n = 4."""

from mhc_jax.models import ModelConfig
from mhc_jax.train.config import TrainConfig


def gpu(connection: str, d_model: int, num_layers: int, num_heads: int, learning_rate: float) -> TrainConfig:
  return TrainConfig(
      model=ModelConfig(connection=connection, num_streams=4, num_layers=num_layers, d_model=d_model,
                        num_heads=num_heads, dtype="bfloat16", remat=True),
      seq_len=1024,
      batch_size=64,
      learning_rate=learning_rate,
      warmup_steps=2000,
      train_steps=50_000,
      log_every=50,
      eval_every=1000,
      eval_batches=32,
      checkpoint_every=1000,
  )
