"""Built-in traceable rewards."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from rankjax.data import tasks
from rankjax.errors import UserInputError
from rankjax.models import default_positions
from rankjax.rewards._core import Reward, RewardInputs
from rankjax.rewards._host import host_reward


def verifier_reward(task, tokenizer, records=(), *, weight: float = 1.0) -> Reward:
  """"correct": the task's verifier as a reward. In-graph when the task has
  a traceable verifier (it reads the batch extras `answer_ids` /
  `answer_mask`), else the host verifier through `pure_callback` over
  `records` (the rows the batch's `example_index` points into)."""
  graph = task.graph_verifier(tokenizer)
  if graph is not None:
    return Reward("correct", lambda x, _: graph(x.completion_tokens, x.completion_mask,
                                                x.extras["answer_ids"], x.extras["answer_mask"]),
                  weight)
  if not task.has_verifier:
    raise UserInputError(f"reward 'correct': task {task.name!r} has no verifier; use a "
                         "reward function (path/to/file.py:function)")
  rows = list(records)

  def verify(prompts, completions, row):
    return [task.verify(c, r) for c, r in zip(completions, row)]
  return host_reward(verify, tokenizer, columns={"row": rows}, name="correct", weight=weight)


def arithmetic_correct(tokenizer, *, cot: bool = False, weight: float = 1.0) -> Reward:
  """1 if the completion's final answer equals the reference, else 0, in-graph
  on the character tokenizer (`verifier_reward` of the arithmetic task).

  Needs extras `answer_ids` / `answer_mask` (see `tasks.encode_answers`).
  Agrees exactly with the Python `tasks.verify` on decoded text.
  """
  return verifier_reward(tasks.Arithmetic(tasks.ArithmeticTask(cot=cot)), tokenizer,
                         weight=weight)


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


def env_reward(*, weight: float = 1.0) -> Reward:
  """The multi-turn environment's rewards, summed over the row's turns
  (`SampleOutput.env_reward`; 0 for a single-turn rollout)."""
  return Reward("env", lambda x, _: x.extras["env_reward"].astype(jnp.float32), weight)


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

