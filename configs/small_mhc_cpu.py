"""The small CPU trio, mhc member (see _small_cpu.py)."""

from _small_cpu import small_cpu


def get_config():
  return small_cpu("mhc")
