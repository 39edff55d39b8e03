"""The reward interface and the weighted combination."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RewardInputs:
  """What a reward sees, for R = B * G rows (extras already repeated G times).

  prompt_tokens / prompt_mask: [R, P] left-padded prompts.
  completion_tokens / completion_mask: [R, N] completions (mask = real tokens,
    the EOS included).
  finished: bool[R] the completion ended with an EOS.
  extras: per-row arrays from the dataset (e.g. `answer_ids`, `answer_mask`,
    `example_index`).
  """
  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  completion_tokens: jax.Array
  completion_mask: jax.Array
  finished: jax.Array
  extras: Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Reward:
  """A named reward. `state` is an optional pytree (e.g. a reward model's
  parameters) passed to `fn` as a traced argument, so it is not baked into
  the compiled program as a constant."""
  name: str
  fn: Callable[[RewardInputs, Any], jax.Array]
  weight: float = 1.0
  state: Any = None


def score(rewards: Sequence[Reward], inputs: RewardInputs, states: Sequence[Any] | None = None):
  """Per-reward scores f32[R, K] (NaN = not applicable)."""
  if not rewards:
    raise ValueError("no rewards given")
  states = [r.state for r in rewards] if states is None else states
  cols = []
  for r, st in zip(rewards, states):
    out = jnp.asarray(r.fn(inputs, st), jnp.float32)
    if out.shape != inputs.completion_tokens.shape[:1]:
      raise ValueError(f"reward {r.name!r} returned shape {out.shape}, expected "
                       f"({inputs.completion_tokens.shape[0]},)")
    cols.append(out)
  return jnp.stack(cols, axis=1)


def combine(per_reward_rk, weights: Sequence[float]):
  """Weighted sum that skips NaN entries; NaN where no reward applies.

  Returns (total f32[R], applicable bool[R]).
  """
  w = jnp.asarray(weights, jnp.float32)[None]
  ok = ~jnp.isnan(per_reward_rk)
  total = jnp.sum(jnp.where(ok, per_reward_rk, 0.0) * w, axis=1)
  applicable = jnp.any(ok, axis=1)
  return jnp.where(applicable, total, jnp.nan), applicable
