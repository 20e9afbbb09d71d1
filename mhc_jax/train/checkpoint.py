"""Orbax checkpoints of everything a run needs to resume: train state, data-iterator position, config.

Each step is one orbax checkpoint directory ``<workdir>/checkpoints/<step>/`` with items
``state`` (params, optimizer state, step), ``data`` (the grain iterator state, JSON) and
``config`` (JSON). Orbax writes to a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoints intact. A checkpoint that cannot be read
is reported, moved aside to ``<workdir>/checkpoints_corrupt/`` (nothing is deleted), and the
previous one is used. With several processes, orbax writes each checkpoint collectively (every
process its own shards, into the same directory), and process 0 alone moves a bad one aside.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import time

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class Checkpointer:
  """Saves and restores ``(state, data_state, config_dict)`` by step."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    self.directory = pathlib.Path(directory).resolve()
    self.keep = keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, config: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)))
    self._manager.wait_until_finished()

  def read_config(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  def restore_latest(self, abstract_state):
    """Returns ``(step, state, data_state, config_dict)`` of the newest readable checkpoint, or None."""
    for step in reversed(self.steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is handled the same way
        self._quarantine(step, e)
        continue
      return step, restored.state, restored.data, restored.config
    return None

  def _quarantine(self, step: int, error: Exception) -> None:
    if jax.process_index() == 0:  # one process moves it; the others wait for that below
      aside = self.directory.parent / f"{self.directory.name}_corrupt" / f"{step}-{int(time.time())}"
      print(f"checkpoint at step {step} in {self.directory} is unreadable "
            f"({type(error).__name__}: {str(error)[:300]}); moving it to {aside} and trying the previous one",
            file=sys.stderr)
      aside.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(aside))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"mhc_jax: checkpoint {step} moved aside")
    self._manager.close()
    self._manager = self._open()

  def close(self) -> None:
    self._manager.close()
