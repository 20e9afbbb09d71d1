"""tiny_cpu on 8 devices as data 2 x fsdp 2 x tensor 2: the same model, data and seed, hence the same
per-step losses up to float reordering. On a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8."""

from mhc_jax.train.presets import tiny_cpu


def get_config():
  return tiny_cpu(mesh=(2, 2, 2), sharding="fsdp_tp")
