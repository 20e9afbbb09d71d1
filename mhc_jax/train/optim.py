"""AdamW with the paper's schedule (warmup, then step decay at 80% / 90%) and weight-decay masks."""

from __future__ import annotations

import jax
import optax

from mhc_jax.train.config import TrainConfig

# Parameter names that get no weight decay: norm scales, biases, gates, HC static parts.
NO_DECAY_NAMES = frozenset({"scale", "bias", "alpha", "s_alpha", "s_beta", "a_pre", "b_post", "a_res"})


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
  """Linear warmup to ``learning_rate``, then step decay (default) or cosine decay."""
  peak, warmup, total = cfg.learning_rate, cfg.warmup_steps, cfg.train_steps
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), peak * 0.1)
  # optax.piecewise_constant_schedule multiplies its scales cumulatively.
  boundaries, scales, previous = {}, [], 1.0
  for fraction, factor in zip(cfg.decay_fractions, cfg.decay_factors):
    boundaries[int(fraction * total)] = factor / previous
    previous = factor
  constant_then_steps = optax.piecewise_constant_schedule(peak, boundaries)
  if warmup == 0:
    return constant_then_steps
  ramp = optax.linear_schedule(peak / warmup, peak, warmup - 1)
  return lambda step: jax.numpy.where(step < warmup, ramp(step), constant_then_steps(step))


def decay_mask(params) -> dict:
  """True where weight decay applies: matrices, not norms, biases, gates or HC static parts."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) not in NO_DECAY_NAMES, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                  weight_decay=cfg.weight_decay, mask=decay_mask),
  )
