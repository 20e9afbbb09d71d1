"""``python -m mhc_jax.ops.cpu build``: compiles the C++ CPU kernels ahead of use.

Prints the library's path and exits 0, or prints why it cannot be built or loaded and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from mhc_jax.ops.cpu import build


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mhc_jax.ops.cpu",
                                   description="The fused C++ kernels for XLA:CPU.")
  commands = parser.add_subparsers(dest="command", required=True)
  build_parser = commands.add_parser("build", help="compile (unless cached), load and check the kernels; "
                                                   "print the library's path")
  build_parser.add_argument("--quiet", action="store_true", help="no notice when it compiles")
  args = parser.parse_args(argv)
  try:
    build.ensure_built(announce=not args.quiet)
  except RuntimeError as e:
    print(e, file=sys.stderr)
    return 1
  print(build.library_path())
  return 0


if __name__ == "__main__":
  sys.exit(main())
