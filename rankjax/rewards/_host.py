"""Host-side Python rewards with TRL's calling convention."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.rewards._core import Reward, RewardInputs


def _text(tokenizer, ids, mask) -> str:
  return tokenizer.decode([int(t) for t, m in zip(ids, mask) if m])


def score_on_host(fn: Callable, name: str, tokenizer, prompt_tokens, prompt_mask,
                  completion_tokens, completion_mask, example_index,
                  columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
  """Decode, call `fn(prompts, completions, **columns)`, validate, -> f32[R].

  `example_index[r]` is the dataset row of sample r: it selects each
  column's value, so what the function sees cannot race with the next batch.
  None (and NaN) mean "does not apply" and become NaN.
  """
  rows = len(completion_tokens)
  prompts = [_text(tokenizer, t, m) for t, m in zip(prompt_tokens, prompt_mask)]
  completions = [_text(tokenizer, t, m) for t, m in zip(completion_tokens, completion_mask)]
  cols = {k: [v[int(i)] for i in example_index] for k, v in columns.items()}
  try:
    out = fn(prompts=prompts, completions=completions, **cols)
  except Exception as e:
    raise RuntimeError(f"reward {name!r} raised {type(e).__name__}: {e}") from e
  out = list(out) if out is not None else None
  if out is None or len(out) != rows:
    got = "None" if out is None else f"{len(out)} values"
    raise ValueError(f"reward {name!r} returned {got} for {rows} completions")
  values = np.full(rows, np.nan, np.float32)
  for i, v in enumerate(out):
    if v is None:
      continue
    try:
      values[i] = float(v)
    except (TypeError, ValueError):
      raise ValueError(f"reward {name!r} returned a non-number {v!r} for completion {i}") from None
    if math.isinf(values[i]):
      raise ValueError(f"reward {name!r} returned {v!r} for completion {i}")
  return values


def host_reward(fn: Callable, tokenizer, *, columns: Mapping[str, Sequence[Any]] | None = None,
                name: str | None = None, weight: float = 1.0) -> Reward:
  """Wrap a TRL-style Python reward so the jitted step can call it.

  columns: the dataset's extra columns (full lists, indexed by the batch's
    `example_index` extra) passed to `fn` as keyword arguments.
  It runs through `jax.pure_callback`: the step stays one compiled program
  and the host work happens only for rewards that need Python.
  """
  name = name or getattr(fn, "__name__", "host_reward")
  columns = dict(columns or {})

  def callback(pt, pm, ct, cm, idx):
    return score_on_host(fn, name, tokenizer, pt, pm, ct, cm, idx, columns)

  def traced(x: RewardInputs, _):
    idx = x.extras.get("example_index")
    if idx is None:
      idx = jnp.zeros(x.completion_tokens.shape[0], jnp.int32)
      if columns:
        raise ValueError(f"reward {name!r} needs the batch extra 'example_index' to "
                         "look up its dataset columns")
    shape = jax.ShapeDtypeStruct((x.completion_tokens.shape[0],), jnp.float32)
    return jax.pure_callback(callback, shape, x.prompt_tokens, x.prompt_mask,
                             x.completion_tokens, x.completion_mask, idx)
  return Reward(name, traced, weight)
