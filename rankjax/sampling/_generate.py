"""Host-side `generate`: validation, length buckets, one jit per shape."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankjax.models import Transformer
from rankjax.sampling._loop import SampleOutput, sample_loop
from rankjax.sampling._processors import RowParams

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Decoding settings. temperature 0 = greedy.

  Processor order is transformers': repetition penalty -> temperature ->
  top-k -> top-p -> min-p. temperature/top_k/top_p/min_p/max_new_tokens
  become traced per-row arrays, so changing them never recompiles; the
  completion buffer is rounded up to a bucket of `max_new_tokens`.
  """
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  repetition_penalty: float = 1.0
  num_samples: int = 1
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0
  # Length buckets for prompts and completions: shapes repeat, so the jit
  # cache stays small.
  buckets: tuple[int, ...] = DEFAULT_BUCKETS
  # Cap on prompt + completion; None = the model's max_position_embeddings.
  max_length: int | None = None

  def validate(self) -> None:
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if not 0.0 <= self.min_p <= 1.0:
      raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
    if self.repetition_penalty <= 0:
      raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
    if self.num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")

  def row_params(self, rows: int) -> RowParams:
    full = lambda v, dt: jnp.full((rows,), v, dt)
    return RowParams(temperature=full(self.temperature, jnp.float32),
                     top_k=full(self.top_k, jnp.int32),
                     top_p=full(self.top_p, jnp.float32),
                     min_p=full(self.min_p, jnp.float32),
                     repetition_penalty=full(self.repetition_penalty, jnp.float32),
                     max_new_tokens=full(self.max_new_tokens, jnp.int32))


def bucket(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n (or n itself beyond the largest bucket)."""
  for b in sorted(buckets):
    if b >= n:
      return b
  return n


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def pad_prompts(prompts, vocab_size: int, *, pad_id: int, length: int | None = None,
                buckets: Sequence[int] = DEFAULT_BUCKETS):
  """Ragged token lists (or (tokens, mask)) -> left-padded numpy [B, P].

  Raises ValueError for an empty batch, an empty prompt or an out-of-range id.
  """
  if isinstance(prompts, tuple) and len(prompts) == 2 and hasattr(prompts[0], "shape"):
    tokens, mask = (np.asarray(x) for x in prompts)
    if tokens.shape != mask.shape or tokens.ndim != 2:
      raise ValueError(f"prompt tokens {tokens.shape} and mask {mask.shape} must both be [B, P]")
    rows = [list(t[m.astype(bool)]) for t, m in zip(tokens, mask)]
  else:
    rows = [list(map(int, p)) for p in prompts]
  if not rows:
    raise ValueError("no prompts given")
  for i, r in enumerate(rows):
    if not r:
      raise ValueError(f"prompt {i} is empty")
    bad = [t for t in r if not 0 <= t < vocab_size]
    if bad:
      raise ValueError(f"prompt {i} has token id {bad[0]} outside [0, {vocab_size})")
  longest = max(map(len, rows))
  p = length or bucket(longest, buckets)
  out = np.full((len(rows), p), pad_id, np.int32)
  mask = np.zeros((len(rows), p), bool)
  for i, r in enumerate(rows):
    out[i, p - len(r):] = r
    mask[i, p - len(r):] = True
  return out, mask, np.asarray([len(r) for r in rows])


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "num_samples", "max_new_tokens", "eos_ids", "pad_id",
    "repetition_penalty", "env"))
def _sample_jit(graphdef, state, tokens, mask, params, rng, extras, *, num_samples,
                max_new_tokens, eos_ids, pad_id, repetition_penalty, env):
  model = nnx.merge(graphdef, state)
  return sample_loop(model, tokens, mask, params, rng, num_samples=num_samples,
                     max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                     repetition_penalty=repetition_penalty, env=env, extras=extras)


def generate(model: Transformer, prompts, config: SamplingConfig, rng=None,
             *, row_params: RowParams | None = None, env=None,
             extras: dict | None = None) -> SampleOutput:
  """Sample `config.num_samples` completions per prompt.

  prompts: a list of token-id lists (ragged) or a `(tokens, mask)` pair of
    [B, P] arrays. Rows are left-padded to a length bucket and the batch is
    padded to a power of two, so batches in one bucket reuse one compile.
  row_params: optional per-row overrides (R = B * num_samples rows).
  env: a multi-turn environment (`rankjax.envs`): max_new_tokens then caps
    the model's and the environment's tokens together.
  extras: per-prompt arrays [B, ...] for the environment's `reset`; by
    default `example_index` = the prompt's position in `prompts`.
  Returns a SampleOutput with R rows (row r continues prompt r // G) and a
  completion axis of bucket(max_new_tokens) slots.
  """
  config.validate()
  cfg = model.config
  tokens, mask, lengths = pad_prompts(prompts, cfg.vocab_size, pad_id=config.pad_token_id,
                                      buckets=config.buckets)
  b, g = tokens.shape[0], config.num_samples
  limit = config.max_length or cfg.max_position_embeddings
  new_max = int(config.max_new_tokens if row_params is None
                else np.max(np.asarray(row_params.max_new_tokens)))
  if lengths.max() + new_max > limit:
    raise ValueError(f"prompt of {lengths.max()} tokens + max_new_tokens {new_max} exceeds "
                     f"the cache limit of {limit} tokens (max_length / max_position_embeddings)")
  n = bucket(new_max, config.buckets)
  # Pad the batch to a power of two with copies of row 0 (dropped below).
  b_pad = _next_pow2(b)
  if b_pad > b:
    tokens = np.concatenate([tokens, np.repeat(tokens[:1], b_pad - b, 0)])
    mask = np.concatenate([mask, np.repeat(mask[:1], b_pad - b, 0)])
  params = row_params if row_params is not None else config.row_params(b * g)
  if params.temperature.shape != (b * g,):
    raise ValueError(f"row_params must have {b * g} rows (B * num_samples), "
                     f"got {params.temperature.shape}")
  params = jax.tree.map(
      lambda x: jnp.concatenate([x, jnp.repeat(x[:1], (b_pad - b) * g, 0)]), params)
  rng = jax.random.key(0) if rng is None else rng
  if env is not None:
    extras = dict(extras or {"example_index": np.arange(b, dtype=np.int32)})
    extras = {k: np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[:1], b_pad - b, 0)])
              for k, v in extras.items()}
  graphdef, state = nnx.split(model)
  out = _sample_jit(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask), params, rng,
                    None if env is None else jax.tree.map(jnp.asarray, extras),
                    num_samples=g, max_new_tokens=n, env=env,
                    eos_ids=tuple(int(e) for e in config.eos_token_ids),
                    pad_id=config.pad_token_id,
                    repetition_penalty=bool(np.any(np.asarray(params.repetition_penalty) != 1.0)))
  return jax.tree.map(lambda x: x[: b * g], out)
