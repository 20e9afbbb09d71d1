"""Typed training configuration, ``configs/<name>.py`` loading, and ``--config.<field>=<value>`` overrides.

A config file defines ``get_config() -> TrainConfig``. Overrides follow the ml_collections
config-flags convention: ``--config.train_steps=500 --config.model.d_model=128``. Every value
is checked when the config is built; an error names the field.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys
import types
import typing

from mhc_jax.models import ModelConfig

SCHEDULES = ("step", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run: model, data, optimizer and loop settings."""

  model: ModelConfig = ModelConfig()
  # Data: "" is the default corpus (Shakespeare + Project Gutenberg); else a text file or folder.
  data_source: str = ""
  seq_len: int = 256
  batch_size: int = 16
  # Optimizer: AdamW, warmup, then step decay at 80% / 90% of training (the paper's recipe).
  learning_rate: float = 3e-3
  warmup_steps: int = 100
  schedule: str = "step"  # "step" | "cosine"
  decay_fractions: tuple[float, ...] = (0.8, 0.9)
  decay_factors: tuple[float, ...] = (0.316, 0.1)  # of the peak learning rate
  b1: float = 0.9
  b2: float = 0.95
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  # Loop.
  train_steps: int = 1000
  seed: int = 0
  log_every: int = 10
  eval_every: int = 100
  eval_batches: int = 8
  checkpoint_every: int = 100
  keep_checkpoints: int = 3

  def __post_init__(self):
    def fail(name, why):
      raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

    if not isinstance(self.model, ModelConfig):
      fail("model", "must be a ModelConfig")
    for name in ("seq_len", "batch_size", "train_steps", "log_every", "eval_every", "eval_batches",
                 "checkpoint_every", "keep_checkpoints"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(name, "must be an int >= 1")
    for name in ("warmup_steps", "seed"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        fail(name, "must be an int >= 0")
    for name in ("learning_rate", "grad_clip"):
      if not getattr(self, name) > 0:
        fail(name, "must be > 0")
    if not 0 <= self.weight_decay:
      fail("weight_decay", "must be >= 0")
    for name in ("b1", "b2"):
      if not 0 <= getattr(self, name) < 1:
        fail(name, "must be in [0, 1)")
    if self.schedule not in SCHEDULES:
      fail("schedule", f"must be one of {SCHEDULES}")
    if len(self.decay_fractions) != len(self.decay_factors):
      fail("decay_factors", f"needs one factor per decay fraction {self.decay_fractions}")
    if list(self.decay_fractions) != sorted(self.decay_fractions) or not all(
        0 < f < 1 for f in self.decay_fractions):
      fail("decay_fractions", "must be increasing fractions in (0, 1)")

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "TrainConfig":
    d = dict(d)
    d["model"] = ModelConfig(**d.get("model", {}))
    for name in ("decay_fractions", "decay_factors"):
      if name in d:
        d[name] = tuple(d[name])
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def load_config_file(path: str | pathlib.Path) -> TrainConfig:
  """Runs ``get_config()`` of a ``configs/<name>.py`` file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_mhc_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(path.parent.resolve()))  # config files may import shared bases beside them
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {str(path)!r} defines no get_config()")
  config = module.get_config()
  if not isinstance(config, TrainConfig):
    raise ValueError(f"get_config() in {str(path)!r} returned {type(config).__name__}, not TrainConfig")
  return config


def _parse_value(text: str, annotation, current, dotted: str):
  """Converts the override text to the field's type."""
  hint = annotation
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    hint = next(a for a in typing.get_args(hint) if a is not type(None))
  try:
    if hint is bool or isinstance(current, bool):
      if text.lower() in ("true", "1", "yes"):
        return True
      if text.lower() in ("false", "0", "no"):
        return False
      raise ValueError(text)
    if hint is int or isinstance(current, int):
      return int(text)
    if hint is float or isinstance(current, float):
      return float(text)
    if typing.get_origin(hint) is tuple or isinstance(current, tuple):
      items = [s for s in text.strip("()[] ").split(",") if s.strip()]
      return tuple(float(s) for s in items)
  except ValueError:
    raise ValueError(f"--config.{dotted}={text!r}: cannot parse as {getattr(hint, '__name__', hint)}") from None
  return text


def apply_overrides(config, overrides: dict[str, str]):
  """Returns ``config`` with ``{"model.d_model": "128", ...}`` applied (nested frozen dataclasses)."""
  for dotted, text in overrides.items():
    config = _override(config, dotted.split("."), text, dotted)
  return config


def _override(obj, path: list[str], text: str, dotted: str):
  fields = {f.name: f for f in dataclasses.fields(obj)}
  name = path[0]
  if name not in fields:
    raise ValueError(f"--config.{dotted}: {type(obj).__name__} has no field {name!r}; "
                     f"fields: {sorted(fields)}")
  current = getattr(obj, name)
  if len(path) > 1:
    if not dataclasses.is_dataclass(current):
      raise ValueError(f"--config.{dotted}: {name!r} is not a nested config")
    return dataclasses.replace(obj, **{name: _override(current, path[1:], text, dotted)})
  hints = typing.get_type_hints(type(obj))
  return dataclasses.replace(obj, **{name: _parse_value(text, hints[name], current, dotted)})


def parse_override_args(argv: list[str]) -> dict[str, str]:
  """Collects ``--config.a.b=value`` (or ``--config.a.b value``) pairs from argv."""
  overrides, i = {}, 0
  while i < len(argv):
    arg = argv[i]
    if not arg.startswith("--config."):
      raise ValueError(f"unknown argument {arg!r}; overrides look like --config.train_steps=100")
    key = arg[len("--config."):]
    if "=" in key:
      key, value = key.split("=", 1)
    elif i + 1 < len(argv):
      i += 1
      value = argv[i]
    else:
      raise ValueError(f"{arg} needs a value")
    overrides[key] = value
    i += 1
  return overrides
