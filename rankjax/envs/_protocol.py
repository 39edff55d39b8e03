"""The environment protocol the decode loop runs (multi-turn rollouts).

A multi-turn rollout is one transcript per row: the model writes a turn,
the environment answers with observation tokens, the model writes the next
turn, and so on, all in the row's completion buffer. A turn ends when the
model writes one of the environment's `turn_ends` token sequences (e.g.
`</calc>` or `</tool_call>`) or reaches `Limits.turn_max_tokens`; an EOS
ends the episode. Observation tokens are context: they enter the KV cache
but get no policy loss, KL or entropy (`SampleOutput.generated` marks the
model's own tokens).

Two kinds of environment, one batched interface (`Environment`):

* traceable (`Traceable`): per-row jnp functions
    reset(record) -> state
    step(state, turn_tokens, turn_mask) -> (state, obs_tokens, obs_mask, reward, done)
  vmapped over rows and run inside the decode `while_loop`;
* host (`HostEnvironment`): the same protocol in plain Python, strings in
  and out (run a tool, query a simulator),
    reset(record) -> state
    step(state, turn_text) -> HostStep(state, observation, reward, done, error)
  called through `jax.experimental.io_callback` at turn ends
  (`rankjax.envs.host`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from rankjax.errors import UserInputError


class EnvError(UserInputError):
  """An environment broke its contract (wrong types, too many observation
  tokens, raised); the message names the environment and the turn."""



OBSERVATIONS = ("forced", "prefill")


@dataclasses.dataclass(frozen=True)
class Limits:
  """How long an episode may run. The completion buffer
  (`sample.max_new_tokens`) is the cap on all tokens of a row, model and
  environment together (max_total_tokens)."""
  max_turns: int = 4               # environment steps per row
  turn_max_tokens: int = 0         # model tokens per turn before the env steps anyway; 0 = none
  max_observation_tokens: int = 16  # O: the widest observation
  # How an observation enters the row's KV cache: "forced", one token per
  # decode step, or "prefill", one O-token chunk when the environment
  # answers (`sampling.sample_loop`). Same transcripts either way.
  observations: str = "forced"

  def __post_init__(self):
    if self.observations not in OBSERVATIONS:
      raise ValueError(f"env observations must be one of {OBSERVATIONS}, "
                       f"got {self.observations!r}")


@struct.dataclass
class Observation:
  """What one environment step returns, for R rows (only rows whose turn
  ended are read).

  tokens: i32[R, O] observation tokens, left-aligned; mask: bool[R, O]
  (a prefix: True for the first `length` slots); reward: f32[R] this
  turn's reward; done: bool[R] the episode is over; error: bool[R] the
  turn was a failed action (unknown tool, bad arguments, a tool that
  raised), counted by the `env/errors` metric.
  """
  tokens: jax.Array
  mask: jax.Array
  reward: jax.Array
  done: jax.Array
  error: jax.Array


class Environment(Protocol):
  """What `sampling.sample_loop(..., env=...)` calls (batched over rows).

  name: for messages and metrics. turn_ends: token-id sequences that end a
  model turn. limits: `Limits`. reset(extras) -> state: extras are the
  batch's per-row arrays [R, ...] (`example_index`, `answer_ids`, ...).
  step(state, tokens, turn_mask, active) -> (state, Observation): tokens
  i32[R, C] the completion buffer so far, turn_mask bool[R, C] the tokens
  of each row's turn that just ended, active bool[R] the rows whose turn
  ended (others must keep their state). An environment may also carry
  `tools_schema` (JSON schemas): prompts are then rendered by the chat
  template with them (`Task.prompt_ids(..., tools=)`).
  """
  name: str
  turn_ends: tuple[tuple[int, ...], ...]
  limits: Limits

  def reset(self, extras: Mapping[str, jax.Array]) -> Any: ...

  def step(self, state, tokens, turn_mask, active) -> tuple[Any, Observation]: ...


def _select(active, new, old):
  def pick(n, o):
    a = active.reshape(active.shape + (1,) * (n.ndim - 1))
    return jnp.where(a, n, o)
  return jax.tree.map(pick, new, old)


@dataclasses.dataclass(frozen=True)
class Traceable:
  """A traceable environment from per-row jnp functions (see the module
  docstring); `Environment` by vmapping them over rows.

  reset_fn(record) -> state: record is one row's extras ({name: array});
  step_fn(state, turn_tokens i32[C], turn_mask bool[C]) ->
    (state, obs_tokens i32[O], obs_mask bool[O], reward f32[], done bool[])
  and optionally a sixth output, error bool[].
  """
  name: str
  reset_fn: Callable
  step_fn: Callable
  turn_ends: tuple[tuple[int, ...], ...]
  limits: Limits = Limits()

  def reset(self, extras):
    return jax.vmap(self.reset_fn)(dict(extras))

  def step(self, state, tokens, turn_mask, active):
    out = jax.vmap(self.step_fn)(state, tokens, turn_mask)
    if not isinstance(out, tuple) or len(out) not in (5, 6):
      raise EnvError(f"environment {self.name!r}: step must return (state, obs_tokens, "
                     f"obs_mask, reward, done[, error]), got {type(out).__name__}"
                     + (f" of {len(out)}" if isinstance(out, tuple) else ""))
    new_state, tokens_o, mask_o, reward, done = out[:5]
    rows = tokens.shape[0]
    error = out[5] if len(out) == 6 else jnp.zeros((rows,), bool)
    o = self.limits.max_observation_tokens
    checks = {"obs_tokens": (tokens_o, (rows, o), jnp.integer, "int"),
              "obs_mask": (mask_o, (rows, o), jnp.bool_, "bool"),
              "reward": (reward, (rows,), jnp.floating, "float"),
              "done": (done, (rows,), jnp.bool_, "bool"),
              "error": (error, (rows,), jnp.bool_, "bool")}
    for field, (x, shape, kind, kind_name) in checks.items():
      if not hasattr(x, "shape") or x.shape != shape or not jnp.issubdtype(x.dtype, kind):
        got = f"{getattr(x, 'dtype', type(x).__name__)}{tuple(getattr(x, 'shape', ()))}"
        raise EnvError(f"environment {self.name!r}: step returned {field} {got}; expected "
                       f"{kind_name} of per-row "
                       f"shape {shape[1:]} (max_observation_tokens={o})")
    obs = Observation(tokens=tokens_o.astype(jnp.int32), mask=mask_o,
                      reward=reward.astype(jnp.float32), done=done, error=error)
    return _select(active, new_state, state), obs


class HostStep(NamedTuple):
  """What a host environment's `step` returns."""
  state: Any
  observation: str
  reward: float = 0.0
  done: bool = False
  error: bool = False


class HostEnvironment(Protocol):
  """A host environment: plain Python, strings in and out.

  name: for messages and metrics. turn_end: the text(s) that end a model
  turn (a string or a tuple of strings, tokenized by the run's tokenizer).
  reset(record) -> state: record is the task's record (a dict) the row's
  prompt came from. step(state, turn_text) -> HostStep: turn_text is the
  model's turn, its turn-end text included.
  """
  name: str
  turn_end: str | tuple[str, ...]

  def reset(self, record: dict) -> Any: ...

  def step(self, state, turn_text: str) -> HostStep: ...
