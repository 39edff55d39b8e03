"""The decode loop: prefill once, then `lax.while_loop` over a fixed buffer.

`sample_loop` is a pure, jittable function of the model and arrays, so a
jitted training step (GRPO, PPO) can call it inside its own program; the
host-side `generate` is only validation, bucketing and a jit around it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from rankjax.models import KVCache, Transformer, default_positions
from rankjax.sampling._processors import RowParams, sample_tokens


@struct.dataclass
class SampleOutput:
  """R = B * num_samples rows; row r continues prompt r // num_samples.

  tokens:            i32[R, N] completion tokens, `pad_id` after the end.
  lengths:           i32[R] tokens generated, the EOS included.
  finished:          bool[R] the row ended with an EOS (not truncated).
  logprobs:          f32[R, N] log-prob of each token under the model at the
                     row's sampling temperature, unfiltered: log-softmax(logits / T)
                     (T = 1 for greedy rows). PPO/GRPO's π_old; the trainer
                     computes π at the same T (TRL's semantics).
  sampling_logprobs: f32[R, N] log-prob under the processed distribution
                     actually sampled from (0 for greedy rows).
  """
  tokens: jax.Array
  lengths: jax.Array
  finished: jax.Array
  logprobs: jax.Array
  sampling_logprobs: jax.Array

  @property
  def mask(self) -> jax.Array:
    """bool[R, N]: real completion tokens."""
    return jnp.arange(self.tokens.shape[1])[None] < self.lengths[:, None]


@struct.dataclass
class _State:
  step: jax.Array           # i32[]: index of the next token to sample
  last: jax.Array           # i32[R]: the token sampled at step - 1
  done: jax.Array           # bool[R]
  out: SampleOutput
  cache: KVCache
  seen: jax.Array | None    # bool[R, V] when a repetition penalty is on
  rng: jax.Array


def _repeat_cache(cache: KVCache, n: int) -> KVCache:
  # Inside the graph: each prompt is prefilled once and its keys/values are
  # broadcast to its n samples (the GRPO group).
  assert cache.rows is None, "repeat a cache before giving it a slot table"
  return KVCache(k=tuple(jnp.repeat(x, n, axis=0) for x in cache.k),
                 v=tuple(jnp.repeat(x, n, axis=0) for x in cache.v),
                 mask=jnp.repeat(cache.mask, n, axis=0), index=cache.index)


def _is_eos(tokens, eos_ids):
  if not eos_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.any(tokens[:, None] == jnp.asarray(eos_ids, jnp.int32)[None], axis=-1)


def _record(state: _State, t, tokens, raw_lp, proc_lp, params, eos_ids, pad_id):
  """Write step t's tokens for rows still running; update done/lengths."""
  live = ~state.done
  tokens = jnp.where(live, tokens, pad_id)
  out = state.out
  out = out.replace(
      tokens=out.tokens.at[:, t].set(tokens),
      logprobs=out.logprobs.at[:, t].set(jnp.where(live, raw_lp, 0.0)),
      sampling_logprobs=out.sampling_logprobs.at[:, t].set(jnp.where(live, proc_lp, 0.0)),
      lengths=out.lengths + live.astype(jnp.int32),
      finished=out.finished | (live & _is_eos(tokens, eos_ids)))
  done = state.done | out.finished | (t + 1 >= params.max_new_tokens)
  seen = state.seen
  if seen is not None:
    seen = seen.at[jnp.arange(seen.shape[0]), tokens].set(True)
  return state.replace(last=tokens, done=done, out=out, seen=seen)


def sample_loop(model: Transformer, prompt_tokens_bp, prompt_mask_bp,
                params: RowParams, rng, *, num_samples: int, max_new_tokens: int,
                eos_ids: tuple[int, ...], pad_id: int = 0,
                repetition_penalty: bool = False) -> SampleOutput:
  """Sample `num_samples` completions for each left-padded prompt.

  prompt_tokens_bp / prompt_mask_bp: [B, P], left-padded (real tokens at the
    end, so every row's next token goes into the same cache slot).
  params: per-row parameters for R = B * num_samples rows.
  max_new_tokens: the static buffer length N (rows stop earlier through
    `params.max_new_tokens`).
  repetition_penalty: static switch for the [R, V] seen-token mask.
  """
  b, p = prompt_tokens_bp.shape
  g, n = num_samples, max_new_tokens
  rows = b * g
  mask = prompt_mask_bp.astype(bool)
  positions = default_positions(mask)
  cache = model.init_cache(b, p + n)
  # Split once: the decode loop reads each layer's weights in place, and the
  # LM head in the layout that few-row matmuls stream fastest.
  weights, head = model.layer_weights(), model.decode_head()
  hidden, cache = model.forward_cached(prompt_tokens_bp, positions, mask, cache, weights)
  logits = jnp.repeat(model.logits(hidden[:, -1:], head)[:, 0], g, axis=0)
  cache = _repeat_cache(cache, g)
  next_pos = jnp.repeat(positions[:, -1] + 1, g)

  seen = None
  if repetition_penalty:
    seen = jnp.zeros((b, logits.shape[-1]), bool)
    seen = seen.at[jnp.arange(b)[:, None], prompt_tokens_bp].max(mask)
    seen = jnp.repeat(seen, g, axis=0)
  zeros = jnp.zeros((rows, n), jnp.float32)
  out = SampleOutput(tokens=jnp.full((rows, n), pad_id, jnp.int32),
                     lengths=jnp.zeros(rows, jnp.int32), finished=jnp.zeros(rows, bool),
                     logprobs=zeros, sampling_logprobs=zeros)
  state = _State(step=jnp.ones((), jnp.int32), last=jnp.zeros(rows, jnp.int32),
                 done=jnp.zeros(rows, bool), out=out, cache=cache, seen=seen, rng=rng)

  def sample(state, logits, t):
    tok, raw_lp, proc_lp = sample_tokens(jax.random.fold_in(state.rng, t), logits,
                                         state.seen, params)
    return _record(state, t, tok, raw_lp, proc_lp, params, eos_ids, pad_id)

  state = sample(state, logits, 0)

  def cond(state):
    return (state.step < n) & ~jnp.all(state.done)

  def body(state):
    t = state.step
    pos = (next_pos + t - 1)[:, None]
    hidden, cache = model.forward_cached(state.last[:, None], pos,
                                         jnp.ones((rows, 1), bool), state.cache, weights)
    logits = model.logits(hidden, head)[:, 0]
    state = sample(state.replace(cache=cache), logits, t)
    return state.replace(step=t + 1)

  state = jax.lax.while_loop(cond, body, state)
  return state.out
