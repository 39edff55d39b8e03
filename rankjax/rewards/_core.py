"""The reward interface and the weighted combination."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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


def batch_scorer(rewards: Sequence[Reward], weights: Sequence[float] | None = None):
  """A host scorer over sampled completions, for evaluation and reranking:

      score = batch_scorer(rewards)
      total_r = score(prompts, tokens_rn, mask_rn, finished_r, example_index_b, pad_id=0,
                      env_reward_r=None)

  prompts: B token lists (row r continues prompt r // G); example_index_b:
  the record each prompt came from (host rewards read their columns by it);
  env_reward_r: a multi-turn rollout's environment rewards (the "env" reward).
  Returns the weighted total f32[R] (NaN where no reward applies), from ONE
  jitted `score` + `combine` reused across calls of equal shapes.
  """
  rewards = tuple(rewards)
  weights = tuple(weights or (r.weight for r in rewards))
  states = [r.state for r in rewards]

  @jax.jit
  def total(inputs: RewardInputs, states_):
    return combine(score(rewards, inputs, states_), weights)[0]

  def scorer(prompts, tokens_rn, mask_rn, finished_r, example_index_b, *, pad_id: int = 0,
             env_reward_r=None):
    b, r = len(prompts), len(tokens_rn)
    if not b or r % b:
      raise ValueError(f"{r} completions for {b} prompts")
    g = r // b
    length = max(1, max(map(len, prompts)))
    length = 1 << (length - 1).bit_length()  # few distinct shapes, few compiles
    prompt = np.full((b, length), pad_id, np.int32)
    prompt_mask = np.zeros((b, length), bool)
    for i, ids in enumerate(prompts):
      prompt[i, length - len(ids):], prompt_mask[i, length - len(ids):] = ids, True
    inputs = RewardInputs(
        prompt_tokens=np.repeat(prompt, g, 0), prompt_mask=np.repeat(prompt_mask, g, 0),
        completion_tokens=np.asarray(tokens_rn, np.int32),
        completion_mask=np.asarray(mask_rn, bool), finished=np.asarray(finished_r, bool),
        extras={"example_index": np.repeat(np.asarray(example_index_b, np.int32), g),
                "env_reward": (np.zeros(r, np.float32) if env_reward_r is None
                               else np.asarray(env_reward_r, np.float32))})
    return np.asarray(total(inputs, states), np.float32)
  return scorer
