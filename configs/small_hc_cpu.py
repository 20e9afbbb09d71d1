"""The small CPU trio, hc member (see _small_cpu.py)."""

from _small_cpu import small_cpu


def get_config():
  return small_cpu("hc")
