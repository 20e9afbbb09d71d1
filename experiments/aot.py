"""Will a config fit? Compile its train step for N devices, without running it, and print per-device memory.

  python experiments/aot.py --config configs/gpu_1b.py --devices 8
  python experiments/aot.py --config configs/gpu_1b.py --devices 8 --config.mesh='(1,8,1)' --device-memory-gb 80

The mesh is the config's (``--config.mesh``, default data parallel over all N devices) and
its rule set (``--config.sharding``). With N accelerators present, it compiles for them;
otherwise for N fake CPU devices of this machine (XLA's host platform), which the output
says, with what differs from a GPU compile. Nothing is allocated: the state, the batch and
the step exist only as shapes and shardings.
"""

import argparse
import os
import sys
import time

GIB = 2**30
CPU_CAVEATS = """\
Compiled for fake CPU devices, not GPUs. What differs on a GPU:
  * parameters, optimizer state and batch are exact (they follow from shapes and shardings);
  * temp is XLA:CPU's buffer assignment. XLA:GPU fuses differently, keeps bf16 where XLA:CPU
    may upcast to f32, and runs attention through cuDNN: expect a different, usually smaller,
    temp on a GPU;
  * not counted: the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers (about 1-2 GiB
    per GPU), and the fragmentation of XLA's allocator. Keep 10-15% of the device free."""


def _size(num_bytes: int) -> str:
  return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB / 10 else f"{num_bytes / 2**20:.2f} MiB"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   epilog="Override any config field with --config.<field>=<value>.")
  parser.add_argument("--config", required=True, help="path to configs/<name>.py")
  parser.add_argument("--devices", type=int, required=True, help="devices in the mesh, N")
  parser.add_argument("--device-memory-gb", type=float, default=80.0,
                      help="memory of one device, for the verdict (default 80: an H100 or A100-80GB)")
  args, rest = parser.parse_known_args(argv)
  if args.devices < 1:
    parser.error(f"--devices={args.devices}: must be >= 1")
  # Before JAX starts: N host devices, used when there are not N accelerators.
  flag = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                     if not f.startswith("--xla_force_host_platform_device_count")) + " " + flag

  import jax  # noqa: PLC0415 - after XLA_FLAGS

  from mhc_jax import parallel  # noqa: PLC0415
  from mhc_jax.train import config as config_lib  # noqa: PLC0415
  from mhc_jax.train import memory  # noqa: PLC0415

  try:
    cfg = config_lib.apply_overrides(config_lib.load_config_file(args.config),
                                     config_lib.parse_override_args(rest))
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  devices = jax.devices()
  on_cpu = len(devices) < args.devices or devices[0].platform == "cpu"
  if on_cpu:
    devices = jax.devices("cpu")
  try:
    mesh = parallel.make_mesh(cfg.mesh, devices[:args.devices], stages=cfg.pipeline_stages)
  except ValueError as e:
    parser.error(str(e))
  where = f"{args.devices} fake CPU devices" if on_cpu else f"{args.devices} x {devices[0].device_kind}"
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  print(f"compiling the train step of {args.config} for {where}, mesh {sizes}, rules {cfg.sharding!r} ...",
        file=sys.stderr, flush=True)
  start = time.perf_counter()
  try:
    m = memory.train_step_memory(cfg, mesh)
  except ValueError as e:  # e.g. a dimension the mesh does not divide
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"compiled in {time.perf_counter() - start:.0f} s\n", file=sys.stderr)
  print(f"Per-device memory, {args.config} on {where} (mesh {sizes}, rules {cfg.sharding!r}):")
  for name, value in (("parameters", m.parameters), ("optimizer state", m.optimizer_state),
                      ("batch", m.batch), ("activations / temp", m.temp),
                      ("outputs not aliased", m.unaliased_outputs), ("total", m.total)):
    print(f"  {name:<22} {_size(value):>12}")
  print(f"  (XLA's own count of the step's inputs: {_size(m.argument_bytes_by_xla)})")
  budget = args.device_memory_gb * 1e9
  verdict = "fits" if m.total <= 0.85 * budget else "does NOT fit"
  print(f"\n{verdict} in {args.device_memory_gb:g} GB per device "
        f"({100 * m.total / budget:.0f}% used; keep it under ~85%)")
  if on_cpu:
    print("\n" + CPU_CAVEATS)
  return 0


if __name__ == "__main__":
  sys.exit(main())
