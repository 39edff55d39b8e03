"""Built-in traceable rewards."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from rankjax.data import tasks
from rankjax.models import default_positions
from rankjax.rewards._core import Reward, RewardInputs


def arithmetic_correct(tokenizer, *, cot: bool = False, weight: float = 1.0) -> Reward:
  """1 if the completion's final answer equals the reference, else 0.

  Needs extras `answer_ids` / `answer_mask` (see `tasks.encode_answers`).
  Agrees exactly with the Python `tasks.verify` on decoded text.
  """
  ids = tasks.verifier_token_ids(tokenizer)

  def fn(x: RewardInputs, _):
    return tasks.verify_tokens(x.completion_tokens, x.completion_mask, x.extras["answer_ids"],
                               x.extras["answer_mask"], cot=cot, token_ids=ids)
  return Reward("correct", fn, weight)


def contains_reward(sequence: Sequence[int], *, name: str = "format",
                    weight: float = 1.0) -> Reward:
  """1 if the completion contains the token sequence (e.g. a tag such as
  `</think>` or `answer:`), else 0."""
  seq = jnp.asarray(list(sequence), jnp.int32)
  k = len(sequence)

  def fn(x: RewardInputs, _):
    toks, mask = x.completion_tokens, x.completion_mask.astype(bool)
    n = toks.shape[1]
    if k > n:
      return jnp.zeros(toks.shape[0], jnp.float32)
    windows = jnp.stack([toks[:, i: n - k + 1 + i] for i in range(k)], axis=-1)
    wmask = jnp.stack([mask[:, i: n - k + 1 + i] for i in range(k)], axis=-1)
    hit = jnp.all((windows == seq) & wmask, axis=-1)
    return jnp.any(hit, axis=-1).astype(jnp.float32)
  return Reward(name, fn, weight)


def eos_reward(*, weight: float = 1.0) -> Reward:
  """1 if the completion ended with an EOS (not truncated)."""
  return Reward("eos", lambda x, _: x.finished.astype(jnp.float32), weight)


def overlong_penalty(max_length: int, cache: int, *, weight: float = 1.0) -> Reward:
  """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476):
  0 for L <= max - cache, (max - cache - L) / cache in between, -1 beyond."""
  if not 0 < cache <= max_length:
    raise ValueError(f"overlong_penalty: need 0 < cache <= max_length, got {cache}, {max_length}")

  def fn(x: RewardInputs, _):
    length = jnp.sum(x.completion_mask, axis=-1).astype(jnp.float32)
    soft = (max_length - cache - length) / cache
    return jnp.where(length <= max_length - cache, 0.0, jnp.maximum(soft, -1.0))
  return Reward("overlong", fn, weight)


def reward_model_score(model, *, name: str = "rm", weight: float = 1.0) -> Reward:
  """A scalar-head model's score of prompt + completion, run in-graph.

  The score is the value at the last completion token (as transformers'
  sequence classifiers pool at the last real token). The model's parameters
  travel as the reward's `state`, a traced argument of the step.
  """
  if not model.config.num_labels:
    raise ValueError(f"reward {name!r}: the model has no scalar head (num_labels=0)")
  graphdef, state = nnx.split(model)

  def fn(x: RewardInputs, st):
    rm = nnx.merge(graphdef, st)
    tokens = jnp.concatenate([x.prompt_tokens, x.completion_tokens], axis=1)
    mask = jnp.concatenate([x.prompt_mask, x.completion_mask], axis=1).astype(bool)
    hidden = rm.hidden_states(tokens, positions=default_positions(mask), attention_mask=mask)
    values = rm.values(hidden)
    last = x.prompt_tokens.shape[1] + jnp.maximum(jnp.sum(x.completion_mask, -1), 1) - 1
    return jnp.take_along_axis(values, last[:, None], axis=1)[:, 0]
  return Reward(name, fn, weight, state=state)

