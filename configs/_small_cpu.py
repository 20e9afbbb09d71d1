"""Shared base of the matched small CPU trio (residual / HC / mHC): 5-9 minutes each on 2 CPU cores."""

from mhc_jax.models import ModelConfig
from mhc_jax.train.config import TrainConfig


def small_cpu(connection: str) -> TrainConfig:
  return TrainConfig(
      # Unrolled blocks: on CPU, lax.scan's stacked saved activations (zero-filled buffers,
      # dynamic-update-slice writes, dynamic-slice reads) cost 7% of the residual step and
      # 20% of the mHC step at this size. Scan is for deep models' compile times.
      model=ModelConfig(connection=connection, num_streams=4, num_layers=4, d_model=256, num_heads=4,
                        scan_layers=False),
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
