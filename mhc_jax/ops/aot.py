"""Build every GPU kernel for a target GPU on a machine without one, and check it would launch.

    python -m mhc_jax.ops.aot [--gpu H200] [--n 4 8] [--c 4096] [--dtypes bfloat16 float32] [--json F]

Both GPU implementations end as Triton programs, and both are compiled here down to the
machine code (cubin) a GPU would load, by Triton's own compiler and the ``ptxas`` its wheel
bundles:

* ``pallas``: the public ops are lowered for CUDA under an abstract device of the target
  kind (no GPU needed), and the Triton IR that each ``pallas_call`` embeds in its custom call
  is compiled from that IR;
* ``triton``: the ``@triton.jit`` kernels of :mod:`mhc_jax.ops.triton_kernels.kernels` are
  compiled with the block sizes, warps and stages their jax-triton launchers use.

Each build's registers, static shared memory and local memory (spills) come from the cubin
(``cuobjdump -res-usage``), its dynamic shared memory from Triton. :func:`launch_problems`
says why a build could not launch on the target: more shared memory than a block may have,
more registers than the SM holds for the block. Needs the ``triton`` package
(``pip install 'mhc_jax[triton]'``); jax-triton is not needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Target:
  """A GPU: the device kind JAX knows it by, and the launch limits of its architecture."""
  device_kind: str
  arch: int  # compute capability, e.g. 90 for sm_90
  max_shared: int  # bytes of shared memory one block may use (with the opt-in)
  registers: int = 65536  # 32-bit registers per SM
  max_registers: int = 255  # per thread
  max_threads: int = 1024  # per block


TARGETS = {
    "H100": Target("NVIDIA H100", 90, 227 * 1024),
    "H200": Target("NVIDIA H200", 90, 227 * 1024),
    "A100": Target("NVIDIA A100", 80, 163 * 1024),
}


@dataclasses.dataclass(frozen=True)
class Build:
  """One kernel compiled for one target at one shape."""
  impl: str  # "pallas" or "triton"
  kernel: str
  case: str  # the shape and dtype it was built for, e.g. "n=4 C=4096 bfloat16"
  num_warps: int
  registers: int  # per thread
  shared: int  # bytes per block: Triton's dynamic shared memory plus any static
  local: int  # bytes of local memory per thread (register spills, stack arrays)
  cubin_bytes: int
  seconds: float


def launch_problems(build: Build, target: Target) -> list[str]:
  """Why ``build`` would fail to launch on ``target`` (empty when it launches)."""
  threads = 32 * build.num_warps
  out = []
  if threads > target.max_threads:
    out.append(f"{threads} threads per block > {target.max_threads}")
  if build.shared > target.max_shared:
    out.append(f"{build.shared} bytes of shared memory > {target.max_shared} per block")
  if build.registers > target.max_registers:
    out.append(f"{build.registers} registers per thread > {target.max_registers}")
  # Registers are handed out per warp, in units of 256.
  per_warp = -(-build.registers * 32 // 256) * 256
  if per_warp * build.num_warps > target.registers:
    out.append(f"{per_warp * build.num_warps} registers for {build.num_warps} warps > "
               f"{target.registers} per SM")
  return out


# --------------------------------------------------------------------- Triton's compiler


def _triton():
  try:
    import triton
    from triton.backends.compiler import GPUTarget
  except ImportError as e:
    raise ImportError("building the GPU kernels needs Triton: pip install 'mhc_jax[triton]'; "
                      f"import failed: {e}") from e
  os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's own default, stated
  return triton, GPUTarget


def _resources(cubin: bytes) -> dict[str, int]:
  """REG, SHARED, LOCAL, ... of the one kernel in ``cubin``, read by the bundled cuobjdump."""
  triton, _ = _triton()
  tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
  with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(cubin)
    f.flush()
    text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True,
                          check=True).stdout
  line = next(l for l in text.splitlines() if "REG:" in l)
  return {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}


def _compile(src, impl: str, case: str, num_warps: int, num_stages: int, target: Target) -> Build:
  triton, GPUTarget = _triton()
  start = time.perf_counter()
  kernel = triton.compile(src, target=GPUTarget("cuda", target.arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})
  seconds = time.perf_counter() - start
  cubin = kernel.asm["cubin"]
  res = _resources(cubin)
  return Build(impl, kernel.metadata.name, case, num_warps, res["REG"],
               kernel.metadata.shared + res.get("SHARED", 0), res.get("LOCAL", 0), len(cubin), seconds)


# ------------------------------------------------------------------------------ Pallas


def abstract_gpu(target: Target):
  """A context in which ``jax.jit(...).lower(lowering_platforms=("cuda",))`` targets ``target``."""
  from jax.sharding import AbstractDevice, AbstractMesh, AxisType
  device = AbstractDevice(device_kind=target.device_kind, num_cores=None, platform="gpu")
  mesh = AbstractMesh((1,), ("gpu",), axis_types=(AxisType.Explicit,), abstract_device=device)
  return jax.sharding.use_abstract_mesh(mesh)


def _sublayer(x, y, phi, alpha, bias):
  """One mHC sublayer on the Pallas kernels, ``y`` standing in for the function F."""
  from mhc_jax import ops
  h_pre, h_post, h_res = ops.mhc_coefficients(x, phi, alpha, bias, implementation="pallas")
  u = ops.mhc_pre(x, h_pre, implementation="pallas")
  return jnp.sum(ops.mhc_post(x, u * y, h_post, h_res, implementation="pallas").astype(jnp.float32))


def sublayer_inputs(tokens: int, n: int, c: int, dtype):
  from mhc_jax import ops
  k = ops.num_coefficients(n)
  return (jax.ShapeDtypeStruct((tokens, n, c), dtype), jax.ShapeDtypeStruct((tokens, c), dtype),
          jax.ShapeDtypeStruct((n * c, k), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32),
          jax.ShapeDtypeStruct((k,), jnp.float32))


def pallas_programs(fn, *args, target: Target = TARGETS["H200"]) -> list[dict]:
  """The Triton programs of every ``pallas_call`` in ``jax.jit(fn)`` lowered for ``target``.

  Each is ``{"name", "ttir" (text), "num_warps", "num_stages"}``, in program order.
  """
  from jax._src.lib.mlir import ir
  from jaxlib.triton import dialect as tt_dialect

  with abstract_gpu(target):
    module = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).compiler_ir("stablehlo")
  tt_dialect.register_dialect(module.context)
  found = []

  def visit(op):
    for region in op.regions:
      for block in region.blocks:
        for child in block.operations:
          attrs = child.operation.attributes
          if "call_target_name" in attrs and attrs["call_target_name"].value == "__gpu$xla.gpu.triton":
            found.append(attrs["mhlo.backend_config"])
          visit(child.operation)

  visit(module.operation)
  programs = []
  with module.context:
    for config in found:
      ttir = ir.Module.parse(config["ir"].value_bytes).operation.get_asm()
      programs.append({"name": config["name"].value, "ttir": ttir,
                       "num_warps": config["num_warps"].value, "num_stages": config["num_stages"].value})
  return programs


def build_pallas(n: int, c: int, dtype, target: Target, tokens: int = 256,
                 exclude: frozenset[str] = frozenset()) -> list[Build]:
  """Every Pallas kernel of an mHC sublayer (forward and backward) at ``[tokens, n, c]``,
  but those named in ``exclude``."""
  case = f"n={n} C={c} {jnp.dtype(dtype).name}"
  grad = jax.value_and_grad(_sublayer, argnums=(0, 1, 2, 3, 4))
  builds = []
  with tempfile.TemporaryDirectory() as tmp:
    for p in pallas_programs(grad, *sublayer_inputs(tokens, n, c, dtype), target=target):
      if p["name"] in exclude:
        continue
      path = os.path.join(tmp, f"{p['name']}.ttir")
      with open(path, "w") as f:
        f.write(p["ttir"])
      builds.append(_compile(path, "pallas", case, p["num_warps"], p["num_stages"], target))
  return builds


# ------------------------------------------------------------------------------ Triton


def _triton_source(fn, types: dict[str, str], constants: dict[str, object]):
  """An ASTSource with every pointer 16-byte aligned, as jax-triton specializes XLA's buffers."""
  triton, _ = _triton()
  from triton.compiler import ASTSource
  signature = {a: ("constexpr" if a in constants else types[a]) for a in fn.arg_names}
  aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if types.get(a, "").startswith("*")}
  return ASTSource(fn, signature, constexprs=constants, attrs=aligned)


def build_triton(n: int, c: int, dtype, target: Target, exclude: frozenset[str] = frozenset()) -> list[Build]:
  """The jax-triton kernels (Sinkhorn forward/backward, post forward/backward) at ``n``, ``c``."""
  from mhc_jax.ops.triton_kernels import NUM_STAGES, NUM_WARPS, kernels
  name = jnp.dtype(dtype).name
  case = f"n={n} C={c} {name}"
  stream = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}[name]
  np_, block_t = kernels.sinkhorn_blocks(n)
  sinkhorn = {"N": n, "NP": np_, "ITERS": 20, "EPS": 1e-6, "BLOCK_T": block_t}
  np_, block_t, block_c = kernels.post_blocks(n, c)
  post = {"N": n, "NP": np_, "BLOCK_T": block_t, "BLOCK_C": block_c}
  f32 = "*fp32"
  sources = [
      _triton_source(kernels.sinkhorn_fwd_kernel, {"l_ptr": f32, "T": "i32", "p_ptr": f32}, sinkhorn),
      _triton_source(kernels.sinkhorn_bwd_kernel,
                     {"l_ptr": f32, "g_ptr": f32, "T": "i32", "gl_ptr": f32}, sinkhorn),
      _triton_source(kernels.post_fwd_kernel,
                     {"x_ptr": stream, "y_ptr": stream, "hp_ptr": f32, "hr_ptr": f32, "T": "i32",
                      "C": "i32", "o_ptr": stream}, post),
      _triton_source(kernels.post_bwd_kernel,
                     {"x_ptr": stream, "y_ptr": stream, "hp_ptr": f32, "hr_ptr": f32, "g_ptr": stream,
                      "T": "i32", "C": "i32", "gx_ptr": stream, "gy_ptr": stream, "ghp_ptr": f32,
                      "ghr_ptr": f32}, post),
  ]
  return [_compile(s, "triton", case, NUM_WARPS, NUM_STAGES, target) for s in sources
          if s.name not in exclude]


# --------------------------------------------------------------------------------- CLI


def build_all(ns, cs, dtypes, target: Target, impls=("pallas", "triton"), exclude=(),
              progress=None) -> list[Build]:
  exclude = frozenset(exclude)
  cases = [(n, c, d) for n in ns for c in cs for d in dtypes]
  builds = []
  for i, (n, c, d) in enumerate(cases):
    if progress:
      progress(f"[{i + 1}/{len(cases)}] n={n} C={c} {d}")
    if "pallas" in impls:
      builds += build_pallas(n, c, jnp.dtype(d), target, exclude=exclude)
    if "triton" in impls:
      builds += build_triton(n, c, jnp.dtype(d), target, exclude=exclude)
  return builds


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mhc_jax.ops.aot", description=__doc__.split("\n\n")[0])
  parser.add_argument("--gpu", default="H200", choices=sorted(TARGETS))
  parser.add_argument("--n", type=int, nargs="+", default=[4, 8])
  parser.add_argument("--c", type=int, nargs="+", default=[4096])
  parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                      choices=["bfloat16", "float32", "float16"])
  parser.add_argument("--impls", nargs="+", default=["pallas", "triton"], choices=["pallas", "triton"])
  parser.add_argument("--exclude", nargs="+", default=[], metavar="KERNEL",
                      help="kernels to leave out, e.g. _coef_bwd_kernel (at n=8 it compiles for minutes)")
  parser.add_argument("--json", help="also write every build as JSON to this file")
  args = parser.parse_args(argv)
  target = TARGETS[args.gpu]
  builds = build_all(args.n, args.c, args.dtypes, target, args.impls, args.exclude,
                     progress=lambda s: print(s, file=sys.stderr, flush=True))
  print(f"{'impl':7} {'kernel':22} {'case':22} {'warps':>5} {'regs':>5} {'shared':>7} {'local':>6} "
        f"{'secs':>5}  launches on {args.gpu} (sm_{target.arch})")
  failed = 0
  for b in builds:
    problems = launch_problems(b, target)
    failed += bool(problems)
    print(f"{b.impl:7} {b.kernel:22} {b.case:22} {b.num_warps:5d} {b.registers:5d} {b.shared:7d} "
          f"{b.local:6d} {b.seconds:5.1f}  {'; '.join(problems) or 'yes'}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump([dataclasses.asdict(b) | {"problems": launch_problems(b, target)} for b in builds], f, indent=1)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
