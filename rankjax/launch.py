"""python -m rankjax.launch [--config configs/x.py] [--config.a.b=value ...]
[--workdir DIR] [--multihost | --coordinator HOST:PORT --num_processes N --process_id I]
[--debug]

No arguments runs the built-in demo on CPU. `--multihost` calls
`jax.distributed.initialize()` with no arguments (TPU pods find their
coordinator themselves); the explicit flags are for GPU clusters and local
multi-process runs (see launch/).

A problem with what you gave (a config key, a data row or file, a checkpoint,
a tokenizer, a reward function) stops the run with one line,
`error: <message naming the file, line, field or key>`, and exit code 2;
`--debug` shows the full traceback instead. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import sys

from rankjax import config as config_lib
from rankjax import errors


def parse_args(argv: list[str]):
  parser = argparse.ArgumentParser(prog="python -m rankjax.launch", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=None, help="recipe file with get_config()")
  parser.add_argument("--workdir", default="workdir/demo", help="output directory")
  parser.add_argument("--multihost", action="store_true",
                      help="jax.distributed.initialize() from the environment (TPU pods)")
  parser.add_argument("--coordinator", default=None, help="multi-host: coordinator HOST:PORT")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--debug", action="store_true",
                      help="show the traceback of input errors instead of one line")
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config.") or "=" not in item:
      parser.error(f"unrecognised argument {item!r} (overrides look like --config.a.b=value)")
    key, value = item[len("--config."):].split("=", 1)
    overrides.append((key, value))
  return args, overrides


def main(argv: list[str] | None = None) -> int:
  """Runs the command line; returns the exit code (2: an input error)."""
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    run_job(args, overrides)
  except Exception as e:  # pylint: disable=broad-except
    user_error = errors.find_user_error(e)
    if user_error is None or args.debug:
      raise
    print(f"error: {errors.one_line(user_error)}", file=sys.stderr)
    return 2
  return 0


def run_job(args, overrides: list[tuple[str, str]]) -> None:
  """Config (recipe + overrides, validated), distributed setup, the run."""
  cfg = config_lib.load(args.config)
  for key, value in overrides:
    cfg = config_lib.override(cfg, key, value)
  config_lib.validate(cfg)
  if args.multihost or args.coordinator or args.num_processes:
    import jax
    # CPU processes need a collectives backend to form one global mesh.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.multihost:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(coordinator_address=args.coordinator,
                                 num_processes=args.num_processes, process_id=args.process_id)
  from rankjax import run
  run.execute(cfg, args.workdir)


if __name__ == "__main__":
  sys.exit(main())
