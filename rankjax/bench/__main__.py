"""`python -m rankjax.bench <benchmark> [flags]`; `--help` after the name
lists that benchmark's flags."""

from __future__ import annotations

import argparse
import importlib
import sys

# Benchmark name -> module with `main(argv) -> dict`. Adding one is one line.
BENCHMARKS = {
    "sampler": "rankjax.bench.sampler",
    "train": "rankjax.bench.train",
    "data": "rankjax.bench.data",
    "grpo": "rankjax.bench.grpo",
    "objectives": "rankjax.bench.objectives",
    "plan": "rankjax.bench.plan",
    "tools": "rankjax.bench.tools",
}


def _usage() -> str:
  return (f"usage: python -m rankjax.bench {{{','.join(BENCHMARKS)}}} [flags]\n"
          f"available benchmarks: {', '.join(BENCHMARKS)}")


def _threads(argv: list[str]) -> int | None:
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--threads", type=int, default=None)
  return parser.parse_known_args(argv)[0].threads


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name not in BENCHMARKS:
    print(f"error: unknown benchmark {name!r}\n{_usage()}", file=sys.stderr)
    return 2
  from rankjax.bench import _common
  # Pin before the benchmark module imports torch or starts the jax backend.
  _common.pin_threads(_threads(rest))
  importlib.import_module(BENCHMARKS[name]).main(rest)
  return 0


if __name__ == "__main__":
  sys.exit(main())
