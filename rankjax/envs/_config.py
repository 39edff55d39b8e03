"""The environment a run's `env` config section names."""

from __future__ import annotations

from typing import Sequence

from rankjax.data.tasks import load_callable
from rankjax.envs._calculator import HostCalculator, calculator
from rankjax.envs._host import host
from rankjax.envs._protocol import EnvError, Environment, Limits

BUILTIN_ENVS = ("calculator", "calculator_host", "guess", "tools")


def _is_environment(obj) -> bool:
  return all(hasattr(obj, a) for a in ("reset", "step", "turn_ends", "limits"))


def from_config(cfg, tokenizer, records: Sequence[dict]) -> Environment | None:
  """The `Environment` `cfg` (an `EnvCfg`) names over `records` (the rows
  a batch's `example_index` points into); None for a single-turn run."""
  if not cfg.name:
    return None
  limits = Limits(max_turns=cfg.max_turns, turn_max_tokens=cfg.turn_max_tokens,
                  max_observation_tokens=cfg.max_observation_tokens,
                  observations=cfg.observations)
  if cfg.name == "calculator":
    if not hasattr(tokenizer, "char_id"):
      raise EnvError("env 'calculator' runs in-graph over the built-in character tokenizer; "
                     "with this tokenizer use env.name='calculator_host'")
    return calculator(tokenizer, limits)
  if cfg.name == "calculator_host":
    return host(HostCalculator(), tokenizer, records, limits)
  if cfg.name == "guess":
    from rankjax.envs._games import GuessNumber
    return host(GuessNumber(), tokenizer, records, limits)
  if cfg.name == "tools":
    from rankjax.envs._tools import ToolEnv
    fns = [load_callable(spec, "tool") for spec in cfg.tools]
    return host(ToolEnv(fns, tokenizer, fmt=cfg.tool_format), tokenizer, records, limits)
  if ":" not in cfg.name:
    raise EnvError(f"env {cfg.name!r}: expected one of {', '.join(map(repr, BUILTIN_ENVS))} "
                   "or path/to/file.py:function")
  made = load_callable(cfg.name, "env")()
  if _is_environment(made):
    return made
  if all(hasattr(made, a) for a in ("reset", "step", "turn_end")):
    return host(made, tokenizer, records, limits)
  raise EnvError(f"env {cfg.name!r} returned {type(made).__name__}: expected a host "
                 "environment (name, turn_end, reset, step) or an Environment "
                 "(envs.Traceable, envs.host(...))")
