"""Generate text from the newest checkpoint: ``python experiments/sample.py --workdir DIR``."""

import argparse
import sys

from mhc_jax.train import sampling, trainer


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prompt", default="ROMEO:\n")
  parser.add_argument("--length", type=int, default=400, help="bytes to generate")
  parser.add_argument("--temperature", type=float, default=0.8)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  model, cfg = trainer.load_for_inference(args.workdir)
  text = sampling.generate(model, args.prompt, args.length, context=cfg.seq_len,
                           temperature=args.temperature, seed=args.seed)
  print(args.prompt + text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
