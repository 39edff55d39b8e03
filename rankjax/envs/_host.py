"""Host environments inside the compiled rollout, through `io_callback`.

`host(env, tokenizer, records)` wraps a plain-Python `HostEnvironment` as
an `Environment` the decode loop can run: at the decode steps where some
row's turn ends, one ordered `jax.experimental.io_callback` hands the
turns' token ids to the host, which decodes each row's turn, calls
`env.step`, tokenizes the observations and writes them back as a padded
[R, O] buffer. Per-row Python states live on the host, keyed by row, and
are reset at the start of every rollout from the rows' records
(`example_index`). The device-side state is one int per row (the number of
turns taken), which also orders the callbacks.

A broken contract (a step that raises or returns the wrong types, an
observation longer than `max_observation_tokens`) stops the run with an
`EnvError` naming the environment, the row's record and the turn.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from rankjax.envs._protocol import EnvError, HostEnvironment, HostStep, Limits, Observation


class HostEnv:
  """An `Environment` over a `HostEnvironment` (strings in and out)."""

  def __init__(self, env: HostEnvironment, tokenizer, records: Sequence[dict],
               limits: Limits = Limits()):
    ends = env.turn_end if isinstance(env.turn_end, (tuple, list)) else (env.turn_end,)
    if not ends or not all(isinstance(e, str) and e for e in ends):
      raise EnvError(f"environment {getattr(env, 'name', env)!r}: turn_end must be a non-empty "
                     f"string or tuple of strings, got {env.turn_end!r}")
    self.env, self.tok, self.records, self.limits = env, tokenizer, list(records), limits
    self.name = getattr(env, "name", type(env).__name__)
    # Tool schemas the prompts render (`ToolEnv`), or None.
    self.tools_schema = getattr(env, "tools_schema", None)
    self.turn_ends = tuple(tuple(tokenizer.encode(e)) for e in ends)
    self._states: list = []
    self._index = np.zeros(0, np.int64)

  # -- host side -------------------------------------------------------------

  def _reset(self, example_index):
    index = np.asarray(example_index).astype(np.int64)
    bad = [int(i) for i in index if not 0 <= i < len(self.records)]
    if bad:
      raise EnvError(f"environment {self.name!r}: example_index {bad[0]} is outside the "
                     f"{len(self.records)} records it was given")
    self._index = index
    self._states = []
    for i in index:
      try:
        self._states.append(self.env.reset(self.records[i]))
      except Exception as e:
        raise EnvError(f"environment {self.name!r}: reset raised on record {int(i)}: "
                       f"{type(e).__name__}: {e}") from e
    return np.zeros(len(index), np.int32)

  def _step(self, turns, tokens, turn_mask, active):
    rows, width = tokens.shape[0], self.limits.max_observation_tokens
    obs = np.zeros((rows, width), np.int32)
    mask = np.zeros((rows, width), bool)
    reward = np.zeros(rows, np.float32)
    done, error = np.zeros(rows, bool), np.zeros(rows, bool)
    for r in np.flatnonzero(np.asarray(active)):
      where = f"environment {self.name!r}, record {int(self._index[r])}, turn {int(turns[r]) + 1}"
      text = self.tok.decode(np.asarray(tokens[r])[np.asarray(turn_mask[r])].tolist(),
                             skip_special_tokens=False)
      try:
        out = self.env.step(self._states[r], text)
      except Exception as e:
        raise EnvError(f"{where}: step raised {type(e).__name__}: {e}") from e
      out = _checked(out, where)
      ids = self.tok.encode(out.observation)
      if len(ids) > width:
        raise EnvError(f"{where}: observation of {len(ids)} tokens > max_observation_tokens "
                       f"{width}: {out.observation[:60]!r}")
      self._states[r] = out.state
      obs[r, :len(ids)], mask[r, :len(ids)] = ids, True
      reward[r], done[r], error[r] = out.reward, out.done, out.error
    return np.asarray(turns) + np.asarray(active, np.int32), obs, mask, reward, done, error

  # -- device side -----------------------------------------------------------

  def reset(self, extras):
    if "example_index" not in extras:
      raise EnvError(f"environment {self.name!r} needs the batch's example_index to find "
                     "each row's record")
    index = extras["example_index"]
    return io_callback(self._reset, jax.ShapeDtypeStruct(index.shape, jnp.int32), index,
                       ordered=True)

  def step(self, state, tokens, turn_mask, active):
    rows, width = tokens.shape[0], self.limits.max_observation_tokens
    shapes = (jax.ShapeDtypeStruct((rows,), jnp.int32),
              jax.ShapeDtypeStruct((rows, width), jnp.int32),
              jax.ShapeDtypeStruct((rows, width), jnp.bool_),
              jax.ShapeDtypeStruct((rows,), jnp.float32),
              jax.ShapeDtypeStruct((rows,), jnp.bool_),
              jax.ShapeDtypeStruct((rows,), jnp.bool_))
    turns, obs, mask, reward, done, error = io_callback(
        self._step, shapes, state, tokens, turn_mask, active, ordered=True)
    return turns, Observation(tokens=obs, mask=mask, reward=reward, done=done, error=error)


def _checked(out, where: str) -> HostStep:
  """A step's result as a HostStep, or an EnvError saying what is wrong."""
  if not isinstance(out, tuple) or not 2 <= len(out) <= 5:
    raise EnvError(f"{where}: step must return HostStep(state, observation, reward, done, "
                   f"error), got {type(out).__name__}")
  out = HostStep(*out)
  if not isinstance(out.observation, str):
    raise EnvError(f"{where}: observation must be a str, got {type(out.observation).__name__}")
  for field in ("reward",):
    v = getattr(out, field)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
      raise EnvError(f"{where}: reward must be a finite number, got {v!r}")
  for field in ("done", "error"):
    if not isinstance(getattr(out, field), (bool, np.bool_)):
      raise EnvError(f"{where}: {field} must be a bool, got {getattr(out, field)!r}")
  return out


def host(env: HostEnvironment, tokenizer, records: Sequence[dict],
         limits: Limits = Limits()) -> HostEnv:
  """`env` as an `Environment` over `records` (the rows' `example_index`
  points into them)."""
  return HostEnv(env, tokenizer, records, limits)
