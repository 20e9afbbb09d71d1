"""tiny_cpu on 8 devices as 2 pipeline stages x data 4: the same model (its 2 blocks, one per
stage), data and seed, hence the same per-step losses up to float reordering. The batch of 8 runs
as 2 microbatches of 4 rows, one row per data-parallel device; the bubble is (2-1)/(2+2-1) = 1/3.
On a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8."""

from mhc_jax.train.presets import tiny_cpu


def get_config():
  return tiny_cpu(mesh=(4, 1, 1), sharding="fsdp", pipeline_stages=2, pipeline_microbatches=2)
