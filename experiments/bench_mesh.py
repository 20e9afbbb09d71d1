"""Train-step time on a mesh: kernels per shard against XLA's ops, and pipeline microbatch counts.

    python experiments/bench_mesh.py --config configs/tiny_cpu.py --devices 8 --mesh 8 1 1 [--impls cpu xla]
    python experiments/bench_mesh.py --config configs/tiny_pipeline_cpu.py --mesh 4 1 1 --impls cpu \
        --microbatches 1 2 4

Builds the config's sharded train state and step (``mhc_jax.train.trainer``) for each
implementation and pipeline microbatch count, compiles and warms them up, then times them
round-robin so machine noise hits all alike, and prints the median step time, the ratio to the
first, and for a pipeline its bubble fraction (S - 1) / (M + S - 1). Without N accelerators it
runs on N fake CPU devices, which share this machine's cores: a sanity check of the per-shard
and pipelined paths, not a speed claim.
"""

import argparse
import os
import statistics
import sys
import time


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/tiny_cpu.py")
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--mesh", type=int, nargs=3, default=(-1, 1, 1), metavar=("DATA", "FSDP", "TENSOR"))
  parser.add_argument("--sharding", default=None, help="rule set (default: the config's)")
  parser.add_argument("--impls", nargs="+", default=["cpu", "xla"])
  parser.add_argument("--microbatches", type=int, nargs="+", default=None,
                      help="pipeline microbatch counts to compare (default: the config's)")
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args(argv)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")

  import jax  # noqa: PLC0415 - after XLA_FLAGS
  import numpy as np  # noqa: PLC0415

  from mhc_jax import ops, parallel  # noqa: PLC0415
  from mhc_jax.train import config as config_lib  # noqa: PLC0415
  from mhc_jax.parallel.pipeline import bubble_fraction  # noqa: PLC0415
  from mhc_jax.train import trainer  # noqa: PLC0415
  from mhc_jax.train.optim import make_optimizer  # noqa: PLC0415

  base = config_lib.load_config_file(args.config).replace(mesh=tuple(args.mesh))
  if args.sharding:
    base = base.replace(sharding=args.sharding)
  devices = jax.devices()
  if len(devices) < args.devices:
    devices = jax.devices("cpu")
  mesh = parallel.make_mesh(base.mesh, devices[:args.devices], stages=base.pipeline_stages)
  rules = parallel.RULE_SETS[base.sharding]
  rng = np.random.default_rng(0)
  steps = {}
  variants = [(impl, m) for impl in args.impls for m in args.microbatches or [base.pipeline_microbatches]]
  for impl, microbatches in variants:
    cfg = base.replace(model=base.model.replace(implementation=impl), pipeline_microbatches=microbatches)
    ops.prepare(impl)
    tx = make_optimizer(cfg)
    with trainer.on_mesh(cfg, mesh):
      graphdef, state, shardings = trainer.init_state(cfg, tx, mesh)
      step = trainer.make_train_step(graphdef, tx, shardings, trainer.model_blocks(cfg))
      sharding = parallel.batch_sharding(mesh, rules, cfg.batch_size)
      tokens = rng.integers(0, 256, (cfg.batch_size, cfg.seq_len + 1), dtype=np.int32)
      batch = parallel.global_batch(tokens[parallel.process_rows(sharding, tokens.shape)], sharding,
                                    cfg.batch_size)
      state, metrics = step(state, batch)  # compile and warm up
      jax.block_until_ready(metrics)
    steps[impl, microbatches] = [step, state, batch, []]
  with trainer.on_mesh(base, mesh):  # the same context as at compile time, or the steps retrace
    for _ in range(args.repeats):
      for entry in steps.values():
        step, state, batch, times = entry
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
        entry[1] = state
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  print(f"{args.config}, mesh {sizes}, rules {base.sharding!r}, {devices[0].platform} x {args.devices}, "
        f"median of {args.repeats} steps:")
  first = None
  stages = base.pipeline_stages
  for (impl, microbatches), (_, _, _, times) in steps.items():
    ms = statistics.median(times) * 1e3
    first = first or ms
    pipe = f"   {microbatches} microbatches, bubble {bubble_fraction(stages, microbatches):.2f}" if stages > 1 else ""
    print(f"  {impl:<8} {ms:9.1f} ms/step   x{ms / first:.2f}{pipe}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
