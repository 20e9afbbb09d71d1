"""Training config: files, overrides, errors that name the field; schedule and decay mask."""

import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc_jax.models import ModelConfig, TransformerLM
from mhc_jax.train import config as config_lib
from mhc_jax.train.optim import decay_mask, learning_rate_schedule

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_every_config_file_loads(path):
  before = list(sys.path)
  cfg = config_lib.load_config_file(path)
  assert isinstance(cfg, config_lib.TrainConfig)
  assert sys.path == before


def test_small_trio_differs_only_in_connection():
  trio = [config_lib.load_config_file(CONFIGS / f"small_{c}_cpu.py") for c in ("residual", "hc", "mhc")]
  assert [c.model.connection for c in trio] == ["residual", "hc", "mhc"]
  assert trio[0].replace(model=trio[2].model) == trio[2]


def test_gpu_configs_have_the_advertised_sizes():
  for name, millions in (("gpu_125m", 125), ("gpu_350m", 350), ("gpu_1b", 1000)):
    cfg = config_lib.load_config_file(CONFIGS / f"{name}.py")
    abstract = nnx.eval_shape(lambda cfg=cfg: TransformerLM(cfg.model, rngs=nnx.Rngs(0)))
    count = sum(int(np.prod(p.shape)) for p in __import__("jax").tree.leaves(nnx.state(abstract, nnx.Param)))
    assert abs(count / 1e6 - millions) / millions < 0.15, (name, count)


def test_overrides_nested_and_typed():
  cfg = config_lib.load_config_file(CONFIGS / "tiny_cpu.py")
  overrides = config_lib.parse_override_args(
      ["--config.train_steps=7", "--config.model.connection", "hc", "--config.model.remat=true",
       "--config.learning_rate=1e-3", "--config.decay_fractions=0.5,0.7"])
  cfg = config_lib.apply_overrides(cfg, overrides)
  assert cfg.train_steps == 7 and cfg.model.connection == "hc" and cfg.model.remat is True
  assert cfg.learning_rate == 1e-3 and cfg.decay_fractions == (0.5, 0.7)
  assert config_lib.TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("args, match", [
    (["--config.model.num_heads=3"], "ModelConfig.num_heads=3"),
    (["--config.model.num_streams=0"], "ModelConfig.num_streams=0"),
    (["--config.model.connection=dense"], "ModelConfig.connection='dense'"),
    (["--config.train_steps=0"], "TrainConfig.train_steps=0"),
    (["--config.schedule=linear"], "TrainConfig.schedule='linear'"),
    (["--config.batch_size=abc"], "--config.batch_size='abc': cannot parse as int"),
    (["--config.model.remat=maybe"], "--config.model.remat='maybe': cannot parse as bool"),
    (["--config.decay_fractions=0.5,x"], r"cannot parse as tuple\[float, \.\.\.\]"),
    (["--config.decay_fractions=0.9,0.8"], r"TrainConfig.decay_fractions=\(0.9, 0.8\): must be increasing"),
    (["--config.decay_fractions=0.5"], "TrainConfig.decay_factors=.*one factor per decay fraction"),
    (["--config.b2=1"], r"TrainConfig.b2=1.0: must be a number in \[0.0, 1.0\)"),
    (["--config.nope=1"], "TrainConfig has no field 'nope'"),
    (["--config.model.nope=1"], "ModelConfig has no field 'nope'"),
    (["--config.model=hc"], "TrainConfig.model is a nested config"),
    (["--config.seq_len.x=1"], "TrainConfig.seq_len is not a nested config"),
    (["--steps=3"], "unknown argument '--steps=3'"),
])
def test_config_errors_name_the_field(args, match):
  cfg = config_lib.load_config_file(CONFIGS / "tiny_cpu.py")
  with pytest.raises(ValueError, match=match):
    config_lib.apply_overrides(cfg, config_lib.parse_override_args(args))


def test_step_schedule_follows_the_paper():
  cfg = config_lib.TrainConfig(learning_rate=1.0, warmup_steps=10, train_steps=100)
  lr = learning_rate_schedule(cfg)
  assert float(lr(0)) == pytest.approx(0.1) and float(lr(9)) == pytest.approx(1.0)
  assert float(lr(50)) == pytest.approx(1.0)
  assert float(lr(79)) == pytest.approx(1.0) and float(lr(81)) == pytest.approx(0.316)
  assert float(lr(95)) == pytest.approx(0.1)
  cosine = learning_rate_schedule(cfg.replace(schedule="cosine"))
  assert float(cosine(10)) == pytest.approx(1.0, rel=1e-2) and float(cosine(100)) == pytest.approx(0.1, rel=1e-2)


def test_decay_mask_skips_norms_biases_gates_and_hc_static_parts():
  for connection in ("hc", "mhc"):
    # The mask reads only the parameter paths: an abstract model (shapes, no init) has them all.
    cfg = ModelConfig(num_layers=1, d_model=16, num_heads=2, connection=connection, readout="head")
    model = nnx.eval_shape(lambda cfg=cfg: TransformerLM(cfg, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    mask = decay_mask(params)
    attn = mask["blocks"]["attn"]
    assert attn["sublayer"]["qkv"]["kernel"] and not attn["sublayer"]["norm"]["scale"]
    assert not mask["final_norm"]["scale"] and mask["unembed"]["kernel"]
    if connection == "hc":
      assert not any((attn["a_pre"], attn["b_post"], attn["a_res"], attn["s_alpha"])) and attn["w"]
    else:
      assert attn["phi"] and not attn["bias"] and not attn["alpha"]
      assert mask["head"]["phi"] and not mask["head"]["bias"]
