"""Host-side Python rewards with TRL's calling convention."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.errors import UserInputError
from rankjax.rewards._core import Reward, RewardInputs


class RewardError(UserInputError):
  """A reward function misbehaved; the message names it."""


def _text(tokenizer, ids, mask) -> str:
  return tokenizer.decode([int(t) for t, m in zip(ids, mask) if m])


def call_reward(fn: Callable, name: str, prompts: list, completions: list,
                columns: Mapping[str, list]) -> np.ndarray:
  """`fn(prompts, completions, **columns)` validated -> f32[R]: one value per
  completion, a number or None ("does not apply", NaN here).

  Raises RewardError naming the reward for a wrong count, a non-number, an
  infinity or an exception inside `fn`."""
  rows = len(completions)
  try:
    out = fn(prompts=prompts, completions=completions, **columns)
  except Exception as e:
    raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e}") from e
  out = list(out) if isinstance(out, (list, tuple, np.ndarray)) else out
  if not isinstance(out, list) or len(out) != rows:
    got = f"{len(out)} values" if isinstance(out, list) else repr(out)[:80]
    raise RewardError(f"reward {name!r} returned {got} for {rows} completions "
                      "(expected a list with one float or None per completion)")
  values = np.full(rows, np.nan, np.float32)
  for i, v in enumerate(out):
    if v is None:
      continue
    try:
      values[i] = float(v)
    except (TypeError, ValueError):
      raise RewardError(f"reward {name!r} returned a non-number {v!r} for completion {i}") from None
    if math.isinf(values[i]):
      raise RewardError(f"reward {name!r} returned {v!r} for completion {i}")
  return values


def score_on_host(fn: Callable, name: str, tokenizer, prompt_tokens, prompt_mask,
                  completion_tokens, completion_mask, example_index,
                  columns: Mapping[str, Sequence[Any]], prompts: Sequence[Any] | None = None,
                  chat: bool = False) -> np.ndarray:
  """Decode, call `fn(prompts, completions, **columns)`, validate, -> f32[R].

  `example_index[r]` is the dataset row of sample r: it selects each
  column's value (and the dataset's prompt when `prompts` is given, else
  the decoded prompt tokens), so what the function sees cannot race with
  the next batch. `chat`: completions as `[{"role": "assistant",
  "content": text}]` (TRL's conversational format).
  """
  index = [int(i) for i in example_index]
  if prompts is None:
    prompt_values = [_text(tokenizer, t, m) for t, m in zip(prompt_tokens, prompt_mask)]
  else:
    prompt_values = [prompts[i] for i in index]
  completions = [_text(tokenizer, t, m) for t, m in zip(completion_tokens, completion_mask)]
  if chat:
    completions = [[{"role": "assistant", "content": c}] for c in completions]
  cols = {k: [v[i] for i in index] for k, v in columns.items()}
  return call_reward(fn, name, prompt_values, completions, cols)


def host_reward(fn: Callable, tokenizer, *, columns: Mapping[str, Sequence[Any]] | None = None,
                name: str | None = None, weight: float = 1.0,
                prompts: Sequence[Any] | None = None, chat: bool = False) -> Reward:
  """Wrap a TRL-style Python reward so the jitted step can call it.

  columns: the dataset's extra columns (full lists, indexed by the batch's
    `example_index` extra) passed to `fn` as keyword arguments.
  prompts: the dataset's prompt column (text or messages) to pass instead
    of the decoded prompt tokens; chat: completions as message lists.
  It runs through `jax.pure_callback`: the step stays one compiled program
  and the host work happens only for rewards that need Python.
  """
  name = name or getattr(fn, "__name__", "host_reward")
  columns = dict(columns or {})

  def callback(pt, pm, ct, cm, idx):
    return score_on_host(fn, name, tokenizer, pt, pm, ct, cm, idx, columns, prompts, chat)

  def traced(x: RewardInputs, _):
    idx = x.extras.get("example_index")
    if idx is None:
      idx = jnp.zeros(x.completion_tokens.shape[0], jnp.int32)
      if columns or prompts is not None:
        raise ValueError(f"reward {name!r} needs the batch extra 'example_index' to "
                         "look up its dataset columns")
    shape = jax.ShapeDtypeStruct((x.completion_tokens.shape[0],), jnp.float32)
    return jax.pure_callback(callback, shape, x.prompt_tokens, x.prompt_mask,
                             x.completion_tokens, x.completion_mask, idx)
  return Reward(name, traced, weight)
