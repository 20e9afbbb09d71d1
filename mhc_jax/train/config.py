"""Typed training configuration, ``configs/<name>.py`` loading, and ``--config.<field>=<value>`` overrides.

A config file defines ``get_config() -> TrainConfig``. Overrides use the ml_collections
config-flags spelling, ``--config.train_steps=500 --config.model.d_model=128``, but are applied
here with ``dataclasses.replace``: config_flags sets fields with ``setattr``, which frozen
dataclasses refuse. Every value is checked when the config is built; an error names the field.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import typing

from mhc_jax.models import ModelConfig
from mhc_jax.parallel import RULE_SETS, check_shape
from mhc_jax.parallel.pipeline import check_pipeline
from mhc_jax.validation import check_choice, check_int, check_number

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
  # Parallelism: the mesh sizes (data, fsdp, tensor), -1 standing for the devices left over, and
  # the rule set that maps the parameters' logical axes onto it: "dp" | "fsdp" | "fsdp_tp"
  # (mhc_jax.parallel.rules). The default is data parallel over every device.
  mesh: tuple[int, ...] = (-1, 1, 1)
  sharding: str = "fsdp_tp"
  # Pipeline parallelism (mhc_jax.parallel.pipeline): the blocks split into this many GPipe stages
  # on the mesh's stage axis, each stage a (data, fsdp, tensor) mesh of the devices / stages; the
  # batch runs through them in pipeline_microbatches microbatches. 1 stage: no pipeline.
  pipeline_stages: int = 1
  pipeline_microbatches: int = 1

  def __post_init__(self):
    owner = "TrainConfig"
    if not isinstance(self.model, ModelConfig):
      raise ValueError(f"TrainConfig.model={self.model!r}: must be a ModelConfig")
    for name in ("seq_len", "batch_size", "train_steps", "log_every", "eval_every", "eval_batches",
                 "checkpoint_every", "keep_checkpoints", "pipeline_stages", "pipeline_microbatches"):
      check_int(name, getattr(self, name), 1, owner=owner)
    for name in ("warmup_steps", "seed"):
      check_int(name, getattr(self, name), 0, owner=owner)
    for name in ("learning_rate", "grad_clip"):
      check_number(name, getattr(self, name), low_open=True, owner=owner)
    check_number("weight_decay", self.weight_decay, owner=owner)
    for name in ("b1", "b2"):
      check_number(name, getattr(self, name), high=1.0, owner=owner)
    check_choice("schedule", self.schedule, SCHEDULES, owner=owner)
    check_choice("sharding", self.sharding, tuple(RULE_SETS), owner=owner)
    check_shape(self.mesh, owner=owner)
    check_pipeline(self.model, self.pipeline_stages, self.pipeline_microbatches, self.batch_size, owner=owner)
    for name in ("decay_fractions", "decay_factors"):
      if not isinstance(getattr(self, name), tuple):
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: must be a tuple")
    for i, fraction in enumerate(self.decay_fractions):
      check_number(f"decay_fractions[{i}]", fraction, high=1.0, low_open=True, owner=owner)
    for i, factor in enumerate(self.decay_factors):
      check_number(f"decay_factors[{i}]", factor, owner=owner)
    if list(self.decay_fractions) != sorted(self.decay_fractions):
      raise ValueError(f"TrainConfig.decay_fractions={self.decay_fractions!r}: must be increasing")
    if len(self.decay_factors) != len(self.decay_fractions):
      raise ValueError(f"TrainConfig.decay_factors={self.decay_factors!r}: needs one factor per "
                       f"decay fraction {self.decay_fractions}")

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "TrainConfig":
    """Inverse of ``to_dict`` (JSON turns tuples into lists)."""
    d = dict(d)
    model = dict(d.get("model", {}))
    if "fixed_maps" in model:
      model["fixed_maps"] = tuple(model["fixed_maps"])
    d["model"] = ModelConfig(**model)
    for name in ("decay_fractions", "decay_factors", "mesh"):
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
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {str(path)!r} defines no get_config()")
  config = module.get_config()
  if not isinstance(config, TrainConfig):
    raise ValueError(f"get_config() in {str(path)!r} returned {type(config).__name__}, not TrainConfig")
  return config


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_value(text: str, hint, flag: str):
  """The override text as the field's annotated type (bool, int, float, str or a tuple of them)."""
  try:
    if hint is bool:
      return _BOOLS[text.lower()]
    if hint in (int, float):
      return hint(text)
    if typing.get_origin(hint) is tuple:
      item = typing.get_args(hint)[0]
      # ("pre","post") as Python spells it: items may be quoted.
      return tuple(item(s.strip().strip("'\"")) for s in text.strip("()[] ").split(",") if s.strip())
  except (KeyError, ValueError):
    what = hint.__name__ if isinstance(hint, type) else hint
    raise ValueError(f"{flag}={text!r}: cannot parse as {what}") from None
  return text


def apply_overrides(config, overrides: dict[str, str]):
  """Returns ``config`` with ``{"model.d_model": "128", ...}`` applied (nested frozen dataclasses)."""
  for dotted, text in overrides.items():
    config = _override(config, dotted.split("."), text, f"--config.{dotted}")
  return config


def _override(obj, path: list[str], text: str, flag: str):
  hints = typing.get_type_hints(type(obj))
  name = path[0]
  if name not in hints:
    raise ValueError(f"{flag}: {type(obj).__name__} has no field {name!r}; fields: {sorted(hints)}")
  if len(path) > 1:
    current = getattr(obj, name)
    if not dataclasses.is_dataclass(current):
      raise ValueError(f"{flag}: {type(obj).__name__}.{name} is not a nested config")
    return dataclasses.replace(obj, **{name: _override(current, path[1:], text, flag)})
  if dataclasses.is_dataclass(hints[name]):
    raise ValueError(f"{flag}: {type(obj).__name__}.{name} is a nested config; set its fields, "
                     f"e.g. {flag}.{dataclasses.fields(hints[name])[0].name}=...")
  return dataclasses.replace(obj, **{name: _parse_value(text, hints[name], flag)})


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
