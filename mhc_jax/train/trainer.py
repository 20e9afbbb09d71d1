"""The training loop: jitted, donated, sharded train step; periodic eval; orbax resume; NaN guard; metrics.

``train(cfg, workdir)`` is what ``experiments/train.py`` calls. Rerunning it on the same
workdir resumes from the newest readable checkpoint (model, optimizer and data position),
so a run stopped at any point and resumed gives bit-identical losses on CPU to one that
never stopped; raising ``train_steps`` on a finished workdir continues training.

The state lives on the mesh of ``cfg.mesh`` (data, fsdp, tensor), sharded by the rule set
``cfg.sharding``: it is created sharded (``jit`` with ``out_shardings``), and restored onto
whatever mesh the resuming run has. With several processes (``jax.distributed``), each one
reads its own rows of every batch; process 0 alone prints progress and writes metrics and plots;
all of them write their shards of each checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from mhc_jax import ops, parallel
from mhc_jax.models import TransformerLM
from mhc_jax.parallel import pipeline
from mhc_jax.train import data as data_lib
from mhc_jax.train import plots
from mhc_jax.train.checkpoint import Checkpointer
from mhc_jax.train.config import TrainConfig
from mhc_jax.train.optim import learning_rate_schedule, make_optimizer

METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


def next_token_loss(graphdef, params, batch_BxLp1, blocks=None):
  """Mean cross-entropy (nats) of predicting byte t+1 from bytes <= t (``blocks``: how the model
  applies its blocks, e.g. a pipeline's; see ``model_blocks``)."""
  logits = nnx.merge(graphdef, params)(batch_BxLp1[:, :-1], blocks=blocks)
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch_BxLp1[:, 1:]).mean()


def _new_state(cfg: TrainConfig, tx: optax.GradientTransformation) -> dict:
  params = nnx.to_pure_dict(nnx.state(TransformerLM(cfg.model, rngs=nnx.Rngs(cfg.seed))))
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def abstract_state(cfg: TrainConfig, tx: optax.GradientTransformation, mesh):
  """``(graphdef, abstract state, shardings)``: shapes and placements on ``mesh``, nothing allocated."""
  graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: TransformerLM(cfg.model, rngs=nnx.Rngs(cfg.seed))))
  param_shardings = parallel.param_shardings(abstract_params, parallel.RULE_SETS[cfg.sharding], mesh)
  abstract = jax.eval_shape(lambda: _new_state(cfg, tx))
  shardings = parallel.state_shardings(abstract, param_shardings, tx, mesh)
  return graphdef, parallel.with_shardings(abstract, shardings), shardings


def init_state(cfg: TrainConfig, tx: optax.GradientTransformation, mesh=None):
  """Builds ``(graphdef, state, shardings)``; state = {"step", "params", "opt_state"} as plain pytrees.

  The state is created by one ``jit`` whose ``out_shardings`` place it on ``mesh`` (default: the
  first device) by the rule set ``cfg.sharding``: no device ever holds an unsharded copy.
  """
  mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1]) if mesh is None else mesh
  graphdef, _, shardings = abstract_state(cfg, tx, mesh)
  state = jax.jit(lambda: _new_state(cfg, tx), out_shardings=shardings)()
  return graphdef, state, shardings


def model_blocks(cfg: TrainConfig):
  """How the model applies its blocks in this run: a GPipe pipeline over the mesh's stage axis
  with ``cfg.pipeline_stages > 1``, else None (in order, on every device)."""
  if cfg.pipeline_stages == 1:
    return None
  return pipeline.pipelined_blocks(cfg.pipeline_stages, cfg.pipeline_microbatches)


def make_train_step(graphdef, tx: optax.GradientTransformation, shardings=None, blocks=None):
  """One optimizer step; the old state's buffers are donated to the new one, which keeps
  ``shardings`` (the state's, from ``init_state``)."""

  def step(state, batch):
    loss, grads = jax.value_and_grad(lambda p: next_token_loss(graphdef, p, batch, blocks))(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  return jax.jit(step, donate_argnums=0, out_shardings=None if shardings is None else (shardings, None))


def make_eval_step(graphdef, blocks=None):
  return jax.jit(lambda params, batch: next_token_loss(graphdef, params, batch, blocks))


def evaluate(eval_step, params, batches) -> dict:
  loss = float(np.mean([float(eval_step(params, b)) for b in batches]))
  return {"val_loss": loss, "val_bpb": loss / math.log(2)}


def _read_metrics(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_same_model(ckpt: Checkpointer, cfg: TrainConfig, workdir: pathlib.Path) -> None:
  """Refuses to resume a workdir whose newest checkpoint holds a different model."""
  steps = ckpt.steps()
  try:
    saved_model = ckpt.read_config(steps[-1]).get("model", {}) if steps else {}
  except Exception:  # noqa: BLE001 - unreadable: restore_latest reports it and falls back
    return
  if not saved_model:
    return
  as_json = lambda d: json.loads(json.dumps(d))  # tuples as the lists JSON keeps
  current = as_json(dataclasses.asdict(cfg.model))
  # A field newer than the checkpoint was saved with its default.
  defaults = as_json({f.name: f.default for f in dataclasses.fields(cfg.model)})
  saved_model = {k: saved_model.get(k, defaults[k]) for k in current}
  diff = {k: (saved_model[k], v) for k, v in current.items()
          if k not in ("scan_layers", "remat", "mhc_recompute", "implementation") and saved_model[k] != v}
  if diff:
    fields = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
    raise ValueError(f"{workdir} holds a checkpoint of a different model ({fields}); "
                     "use a new --workdir or the original config")


@contextlib.contextmanager
def on_mesh(cfg: TrainConfig, mesh):
  """The context of a run on ``mesh``: the mesh itself, and the stream ops' token axes (the
  batch's), which they read to run their kernels per shard."""
  with jax.set_mesh(mesh), ops.stream_axes(parallel.batch_axes(parallel.RULE_SETS[cfg.sharding])):
    yield


def make_run_mesh(cfg: TrainConfig):
  """The run's mesh over every device of every process; checks that the batch (and each
  pipeline microbatch) splits over it."""
  mesh = parallel.make_mesh(cfg.mesh, stages=cfg.pipeline_stages)
  ways = parallel.data_parallel_size(mesh, parallel.RULE_SETS[cfg.sharding])
  if cfg.batch_size % ways:
    raise ValueError(f"TrainConfig.batch_size={cfg.batch_size}: must split evenly over the {ways} "
                     f"data-parallel devices of mesh {dict(zip(mesh.axis_names, mesh.axis_sizes))}")
  pipeline.check_pipeline(cfg.model, cfg.pipeline_stages, cfg.pipeline_microbatches, cfg.batch_size, ways)
  return mesh


def train(cfg: TrainConfig, workdir: str | pathlib.Path, *, progress: bool = True) -> list[dict]:
  """Trains (or resumes) ``cfg`` in ``workdir``; returns the metrics rows of the whole run."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data = data_lib.prepare_data(cfg.data_source or None, cfg.seq_len, cfg.batch_size, cfg.seed,
                               verbose=jax.process_index() == 0)
  ops.prepare(cfg.model.implementation)  # the C++ kernels are built before anything is traced
  mesh = make_run_mesh(cfg)
  with on_mesh(cfg, mesh):
    return _train(cfg, workdir, data, mesh, progress)


def _train(cfg: TrainConfig, workdir: pathlib.Path, data: data_lib.TextData, mesh, progress: bool) -> list[dict]:
  primary = jax.process_index() == 0  # prints progress, writes metrics, config and plots
  tx = make_optimizer(cfg)
  schedule = learning_rate_schedule(cfg)
  graphdef, state, shardings = init_state(cfg, tx, mesh)
  rules = parallel.RULE_SETS[cfg.sharding]
  batch_shape = (cfg.batch_size, cfg.seq_len + 1)
  batch_sharding = parallel.batch_sharding(mesh, rules, cfg.batch_size)
  train_iter = data.train_iterator(rows=parallel.process_rows(batch_sharding, batch_shape))

  def placed(batch):  # a global batch (every process holds all of it) -> a sharded array
    sharding = parallel.batch_sharding(mesh, rules, len(batch))
    return parallel.global_batch(batch[parallel.process_rows(sharding, batch.shape)], sharding, len(batch))

  eval_batches = [placed(b) for b in data.eval_batches(cfg.eval_batches)]

  ckpt = Checkpointer(workdir / "checkpoints", cfg.keep_checkpoints)
  metrics_path = workdir / METRICS_FILE
  start = 0
  _check_same_model(ckpt, cfg, workdir)
  restored = ckpt.restore_latest(parallel.with_shardings(jax.eval_shape(lambda: state), shardings))
  if restored is not None:
    start, state, data_state, _ = restored
    train_iter.set_state(data_state)
    if primary:
      rows = [r for r in _read_metrics(metrics_path) if r["step"] <= start]
      metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
      print(f"resumed from step {start} in {workdir}", file=sys.stderr)
  if primary:
    (workdir / "config.json").write_text(cfg.to_json())

  blocks = model_blocks(cfg)
  train_step = make_train_step(graphdef, tx, shardings, blocks)
  eval_step = make_eval_step(graphdef, blocks)
  tokens_per_step = cfg.batch_size * cfg.seq_len
  bar = tqdm(total=cfg.train_steps, initial=start, disable=not (progress and primary), unit="step",
             dynamic_ncols=True, mininterval=1.0)
  last_time, last_step = time.perf_counter(), start
  # Steps dispatched but not yet finished, oldest first; their metrics are still on the device.
  # A step's metrics are read once the next step is dispatched, so the device has queued work
  # whenever the host waits on it. Eval and checkpoint steps are finished before the next step
  # is dispatched, because it donates the state they need.
  unread: list[tuple[int, dict]] = []

  def evals(step: int) -> bool:
    return step % cfg.eval_every == 0 or step == cfg.train_steps

  def saves(step: int) -> bool:
    return step % cfg.checkpoint_every == 0 or step == cfg.train_steps

  def finish() -> None:
    """Reads the oldest unread step's metrics (raising on a non-finite loss), logs them, and runs
    that step's eval and checkpoint, which need ``state`` to still be that step's state."""
    nonlocal last_time, last_step
    step, metrics = unread[0]
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      kept = ckpt.steps()
      raise TrainingDiverged(
          f"loss is {loss} at step {step}; training stopped. The last good checkpoint "
          f"(step {kept[-1] if kept else 'none'}) is kept in {ckpt.directory}.")
    row = None
    if step % cfg.log_every == 0 or step == cfg.train_steps:
      now = time.perf_counter()
      row = {"step": step, "train_loss": loss, "grad_norm": float(metrics["grad_norm"]),
             "learning_rate": float(schedule(step - 1)),
             "tokens_per_sec": tokens_per_step * (step - last_step) / (now - last_time)}
      last_time, last_step = now, step
    paused = time.perf_counter()  # eval and checkpoint time is not training throughput
    if evals(step):
      row = (row or {"step": step, "train_loss": loss}) | evaluate(eval_step, state["params"], eval_batches)
    if row is not None:
      log.write(json.dumps(row) + "\n")
      log.flush()
      bar.set_postfix({k: f"{row[k]:.4g}" for k in ("train_loss", "val_bpb", "tokens_per_sec")
                       if k in row}, refresh=False)
    if saves(step):
      ckpt.save(step, state, train_iter.get_state(), cfg.to_dict())
    last_time += time.perf_counter() - paused
    bar.update(1)
    unread.pop(0)

  def finish_unread() -> None:
    while unread:
      finish()

  data_state = None
  log = metrics_path.open("a") if primary else open(os.devnull, "w")
  try:
    for step in range(start + 1, cfg.train_steps + 1):
      data_state = train_iter.get_state()  # the data position that matches `state` until it advances
      batch = parallel.global_batch(next(train_iter), batch_sharding, cfg.batch_size)
      state, metrics = train_step(state, batch)
      data_state = None
      unread.append((step, metrics))
      while len(unread) > 1:  # the previous step, read while this one runs
        finish()
      if evals(step) or saves(step):
        finish()
  except KeyboardInterrupt:
    _save_on_interrupt(finish_unread, ckpt, state,
                       train_iter.get_state() if data_state is None else data_state, cfg)
    raise
  finally:
    log.close()
    bar.close()
    ckpt.close()
  rows = _read_metrics(metrics_path)
  if primary:
    plots.plot_metrics(rows, workdir / "plots", title=workdir.resolve().name)
  return rows


def _save_on_interrupt(finish_unread, ckpt, state, data_state, cfg) -> None:
  """Ctrl-C: log the steps not yet read (a non-finite loss among them stops the save), then save
  the state and the data position that belongs to it, if they are intact."""
  try:
    finish_unread()
    done = int(state["step"])
    if done > 0 and done not in ckpt.steps():
      ckpt.save(done, state, data_state, cfg.to_dict())
    print(f"\ninterrupted: saved step {done}; rerun the same command to resume", file=sys.stderr)
  except TrainingDiverged as e:
    print(f"\ninterrupted, and nothing saved: {e}", file=sys.stderr)
  except Exception as e:  # noqa: BLE001 - e.g. interrupted inside the step, buffers donated
    print(f"\ninterrupted ({type(e).__name__}); rerun the same command to resume from the last "
          "checkpoint", file=sys.stderr)


def load_for_inference(workdir: str | pathlib.Path):
  """Returns ``(model, cfg)`` with the newest checkpoint's parameters, on the first device.

  The checkpoint is restored into the abstract state (shapes and shardings): nothing is initialized
  first, which would compile the initializer (~5 s on a CPU for the tiny model) only to be overwritten.
  """
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  steps = ckpt.steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
  cfg = TrainConfig.from_dict(ckpt.read_config(steps[-1]))
  ops.prepare(cfg.model.implementation)
  mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])  # init_state's default placement
  graphdef, target, _ = abstract_state(cfg, make_optimizer(cfg), mesh)
  restored = ckpt.restore_latest(target)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no readable checkpoint in {workdir}/checkpoints")
  return nnx.merge(graphdef, restored[1]["params"]), cfg


__all__ = ["TrainingDiverged", "abstract_state", "evaluate", "init_state", "load_for_inference", "make_eval_step",
           "make_run_mesh", "make_train_step", "model_blocks", "next_token_loss", "train"]
