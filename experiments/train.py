"""Train (or resume) a language model: ``python experiments/train.py --config configs/<name>.py --workdir DIR``.

Any config field can be overridden with ``--config.<field>=<value>``, e.g.
``--config.train_steps=2000 --config.model.connection=hc --config.mesh='(2,2,2)'``. Rerunning
the same command on the same workdir resumes from its newest checkpoint, on any mesh.

Several processes (hosts): start one per host with ``--coordinator_address HOST:PORT
--num_processes P --process_id I``; under SLURM or Open MPI with no flags, JAX detects them.
The workdir must be on a filesystem that every process sees.
"""

import argparse
import sys

import jax

from mhc_jax import parallel
from mhc_jax.train import config as config_lib
from mhc_jax.train import host
from mhc_jax.train import trainer


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="Override any config field with --config.<field>=<value>, e.g. --config.train_steps=2000 "
             "--config.model.connection=hc.")
  parser.add_argument("--config", required=True, help="path to configs/<name>.py")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and plots go here")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  group = parser.add_argument_group("multi-process (jax.distributed; omit all three on SLURM / Open MPI)")
  group.add_argument("--coordinator_address", help="HOST:PORT of process 0's coordinator service")
  group.add_argument("--num_processes", type=int, help="processes in the run, one per host")
  group.add_argument("--process_id", type=int, help="this process's index, 0 .. num_processes-1")
  args, rest = parser.parse_known_args(argv)
  try:
    cfg = config_lib.apply_overrides(config_lib.load_config_file(args.config),
                                     config_lib.parse_override_args(rest))
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  host.keep_freed_memory()  # before JAX starts its backend
  try:
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  except ValueError as e:
    parser.error(str(e))
  if jax.process_index() == 0:
    print(f"training {args.config} in {args.workdir} on {jax.process_count()} process(es), "
          f"{jax.device_count()} device(s):\n{cfg.to_json()}", file=sys.stderr)
  try:
    rows = trainer.train(cfg, args.workdir, progress=not args.no_progress)
  except trainer.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    return 130
  last = next((r for r in reversed(rows) if "val_bpb" in r), None)
  if last and jax.process_index() == 0:
    print(f"done: step {last['step']}, val loss {last['val_loss']:.4f}, "
          f"val bits/byte {last['val_bpb']:.4f}; plots in {args.workdir}/plots", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
