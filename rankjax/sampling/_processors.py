"""Logit processing in the transformers order, without sorting the vocabulary.

repetition penalty -> temperature -> top-k -> top-p -> min-p.

Every filter keeps the tokens whose (temperature-scaled) logit is at least a
per-row threshold: top-k keeps logits >= the k-th largest, top-p keeps the
smallest top set whose probability reaches p, min-p keeps logits >=
max + log(min_p). The kept sets are nested, so their intersection is "logit >=
the largest of the three thresholds", and sampling is one categorical draw
over the full vocabulary with everything below the threshold masked.

Only the thresholds need order statistics. They come from a `lax.top_k`
window of W logits; a row whose top-k exceeds W, or whose nucleus is wider
than the window, gets its thresholds by bisection on order-preserving integer
keys instead (32 masked sums; under `lax.cond`, so only on steps that need
it). Nothing sorts the vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

_NEG = -1e30


@struct.dataclass
class RowParams:
  """Per-row sampling parameters: traced arrays, so changing them never
  recompiles. temperature 0 means greedy for that row."""
  temperature: jax.Array          # f32[R]
  top_k: jax.Array                # i32[R]  (0 = off)
  top_p: jax.Array                # f32[R]  (1 = off)
  min_p: jax.Array                # f32[R]  (0 = off)
  repetition_penalty: jax.Array   # f32[R]  (1 = off)
  max_new_tokens: jax.Array       # i32[R]

  def repeat(self, n: int) -> "RowParams":
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), self)


def apply_repetition_penalty(logits_rv, seen_rv, penalty_r):
  """transformers' rule: seen logits divided by p if > 0, multiplied if < 0."""
  p = penalty_r[:, None]
  penalised = jnp.where(logits_rv > 0, logits_rv / p, logits_rv * p)
  return jnp.where(seen_rv, penalised, logits_rv)


def _thresholds_from_sorted(sorted_rw, lse_r, params: RowParams):
  """top-k and top-p thresholds from the W largest scaled logits (desc).

  lse_r: log of the normaliser of the distribution top-p sees (the top-k set
  when top-k is on, else the whole vocabulary). Returns (threshold_r,
  exact_r) where exact_r says whether W logits were enough.
  """
  w = sorted_rw.shape[-1]
  k = params.top_k
  k_on = (k > 0) & (k < w + 1)
  kth = jnp.take_along_axis(sorted_rw, jnp.clip(k - 1, 0, w - 1)[:, None], axis=-1)[:, 0]
  k_thresh = jnp.where(k > 0, kth, _NEG)
  # Top-p over the window: keep rank r iff the mass strictly before it < p.
  in_k = sorted_rw >= k_thresh[:, None]
  probs = jnp.where(in_k, jnp.exp(sorted_rw - lse_r[:, None]), 0.0)
  before = jnp.cumsum(probs, axis=-1) - probs
  keep = (before < params.top_p[:, None]) & in_k
  keep = keep.at[:, 0].set(True)  # at least one token
  last = jnp.sum(keep, axis=-1) - 1
  p_thresh = jnp.take_along_axis(sorted_rw, last[:, None], axis=-1)[:, 0]
  p_on = params.top_p < 1.0
  p_fits = jnp.sum(probs, axis=-1) >= params.top_p
  thresh = jnp.maximum(k_thresh, jnp.where(p_on, p_thresh, _NEG))
  exact = ((k == 0) | k_on) & (~p_on | p_fits)
  return thresh, exact


def _order_keys(x):
  """uint32 keys with the order of the float32 values (for bisection)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  sign = jnp.uint32(0x80000000)
  return jnp.where(bits & sign, ~bits, bits | sign)


def _key_to_float(key):
  sign = jnp.uint32(0x80000000)
  bits = jnp.where(key & sign, key & ~sign, ~key)
  # Key 0 (below every float: nothing reached the target) keeps everything.
  return jnp.where(key == 0, -jnp.inf, jax.lax.bitcast_convert_type(bits, jnp.float32))


def _largest_key(keys_rv, weights_rv, target_r):
  """Per row, the largest key K with sum(weights[keys >= K]) >= target.

  Weights are non-negative, so the sum only shrinks as K grows and one pass
  per bit, from the top, finds K exactly: 32 masked sums instead of a sort.
  K is always the key of a value in the row (or 0 if even the whole row
  falls short, which keeps everything).
  """
  def bit(i, k_r):
    cand = k_r | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    mass = jnp.sum(jnp.where(keys_rv >= cand[:, None], weights_rv, 0), axis=-1)
    return jnp.where(mass >= target_r, cand, k_r)

  return jax.lax.fori_loop(0, 32, bit, jnp.zeros(keys_rv.shape[:1], jnp.uint32))


def exact_thresholds(scaled_rv, params: RowParams, top_rw):
  """The top-k and top-p threshold of every row, exactly, without sorting.

  top-k: the k-th largest logit = the largest value with at least k logits
  at or above it. top-p: the largest value whose upper set (within top-k)
  holds probability >= p, normalised over the top-k set as transformers
  does. Both by bisection on order-preserving integer keys.
  """
  keys = _order_keys(scaled_rv)
  k = params.top_k
  v = scaled_rv.shape[-1]

  def kth_largest(_):
    k_key = _largest_key(keys, jnp.ones(scaled_rv.shape, jnp.float32), k.astype(jnp.float32))
    return jnp.where((k > 0) & (k < v), _key_to_float(k_key), _NEG)

  def kth_from_window(_):
    kth = jnp.take_along_axis(top_rw, jnp.clip(k - 1, 0, top_rw.shape[1] - 1)[:, None], -1)
    return jnp.where(k > 0, kth[:, 0], _NEG)

  # Only a top-k wider than the window (`top_rw`: each row's W largest,
  # descending) needs its own bisection.
  k_thresh = jax.lax.cond(jnp.any(k > top_rw.shape[1]), kth_largest, kth_from_window, None)

  def nucleus(_):
    in_k = scaled_rv >= k_thresh[:, None]
    lse = jax.nn.logsumexp(jnp.where(in_k, scaled_rv, -jnp.inf), axis=-1)
    probs = jnp.where(in_k, jnp.exp(scaled_rv - lse[:, None]), 0.0)
    p_key = _largest_key(keys, probs, params.top_p)
    return jnp.where(params.top_p < 1.0, _key_to_float(p_key), _NEG)

  p_thresh = jax.lax.cond(jnp.any(params.top_p < 1.0), nucleus,
                          lambda _: jnp.full(k_thresh.shape, _NEG), None)
  return jnp.maximum(k_thresh, p_thresh)


def filter_logits(logits_rv, params: RowParams, *, window: int):
  """Temperature-scaled logits with filtered tokens set to a large negative.

  `logits_rv` must already carry the repetition penalty. Rows with
  temperature 0 are returned scaled by 1 (the caller takes the argmax).
  """
  v = logits_rv.shape[-1]
  temp = jnp.where(params.temperature > 0, params.temperature, 1.0)
  scaled = logits_rv.astype(jnp.float32) / temp[:, None]
  window = min(window, v)
  k = params.top_k

  def windowed(_):
    top_rw, _ = jax.lax.top_k(scaled, window)
    # The normaliser top-p sees: the top-k set if top-k is on (and fits the
    # window), else the whole vocabulary.
    # Like transformers, top-k keeps every logit tied with the k-th largest.
    kth = jnp.take_along_axis(top_rw, jnp.clip(k - 1, 0, window - 1)[:, None], axis=-1)
    in_k = top_rw >= kth
    lse_full = jax.nn.logsumexp(scaled, axis=-1)
    lse_k = jax.nn.logsumexp(jnp.where(in_k, top_rw, -jnp.inf), axis=-1)
    k_fits = (k > 0) & (k <= window)
    lse = jnp.where(k_fits, lse_k, lse_full)
    thresh, exact = _thresholds_from_sorted(top_rw, lse, params)
    # A tie with the k-th logit that runs past the window is not settled.
    exact = exact & ~(k_fits & (top_rw[:, -1] == kth[:, 0]) & (k < v))
    exact = exact | (params.temperature <= 0)  # greedy rows ignore filters
    # Rows the window cannot settle (a wide nucleus, top-k > window) get
    # their thresholds by bisection: 32 masked passes, no sort.
    return jax.lax.cond(
        jnp.all(exact), lambda _: thresh,
        lambda _: jnp.where(exact, thresh, exact_thresholds(scaled, params, top_rw)),
        None)

  # Greedy rows and plain temperature sampling need no order statistics.
  needs_window = jnp.any((params.temperature > 0) & ((k > 0) | (params.top_p < 1.0)))
  thresh = jax.lax.cond(needs_window, windowed,
                        lambda _: jnp.full(scaled.shape[:1], _NEG), None)
  # min-p: prob >= min_p * max prob  <=>  logit >= max + log(min_p).
  min_p_thresh = jnp.where(params.min_p > 0,
                           jnp.max(scaled, axis=-1) + jnp.log(jnp.maximum(params.min_p, 1e-30)),
                           _NEG)
  thresh = jnp.maximum(thresh, min_p_thresh)
  return jnp.where(scaled >= thresh[:, None], scaled, _NEG)


def categorical(rng, logits_rv, block: int = 128):
  """One draw per row from softmax(logits) and its log-prob, by inverse CDF.

  One uniform per row instead of a Gumbel per vocabulary entry (the R x V
  random bits and logs were ~15x the cost of everything else here on CPU):
  block sums pick a block of `block` tokens, then a cumulative sum inside
  it picks the token. Tokens with zero probability are never chosen, even
  when rounding leaves the uniform past the last cumulative sum.
  """
  r, v = logits_rv.shape
  pad = (-v) % block
  x = jnp.pad(logits_rv.astype(jnp.float32), ((0, 0), (0, pad)), constant_values=-jnp.inf)
  top = jnp.max(x, axis=-1, keepdims=True)
  mass = jnp.exp(x - top).reshape(r, -1, block)          # [R, nb, block]
  block_mass = jnp.sum(mass, axis=-1)                     # [R, nb]
  block_cum = jnp.cumsum(block_mass, axis=-1)
  u = jax.random.uniform(rng, (r, 1)) * block_cum[:, -1:]

  def pick(cum, weights, u):
    # First index whose cumulative mass exceeds u, never past the last
    # index with positive mass.
    idx = jnp.sum(cum <= u, axis=-1)
    last = jnp.max(jnp.where(weights > 0, jnp.arange(weights.shape[-1]), 0), axis=-1)
    return jnp.minimum(idx, last)

  b = pick(block_cum, block_mass, u)
  inner = jnp.take_along_axis(mass, b[:, None, None], axis=1)[:, 0]     # [R, block]
  before = jnp.take_along_axis(block_cum - block_mass, b[:, None], -1)
  j = pick(before + jnp.cumsum(inner, axis=-1), inner, u)
  token = (b * block + j).astype(jnp.int32)
  logp = (jnp.take_along_axis(x, token[:, None], -1) - top)[:, 0] - jnp.log(block_cum[:, -1])
  return token, logp


def sample_tokens(rng, logits_rv, seen_rv, params: RowParams, *, window: int):
  """One decoding step for R rows.

  Returns (tokens i32[R], raw log-prob f32[R] under the unprocessed model,
  log-prob f32[R] under the processed sampling distribution).
  """
  logits32 = logits_rv.astype(jnp.float32)  # upcast before log-softmax
  penalised = logits32 if seen_rv is None else apply_repetition_penalty(
      logits32, seen_rv, params.repetition_penalty)
  greedy = jnp.argmax(penalised, axis=-1).astype(jnp.int32)
  is_greedy = params.temperature <= 0

  def draw(_):
    return categorical(rng, filter_logits(penalised, params, window=window))

  # An all-greedy batch skips the [R, V] random draw and second log-softmax
  # (measured ~20% of a greedy decode step on CPU).
  sampled, proc_lp = jax.lax.cond(jnp.any(~is_greedy), draw,
                                  lambda _: (greedy, jnp.zeros(greedy.shape, jnp.float32)), None)
  tokens = jnp.where(is_greedy, greedy, sampled)
  raw_lp = jnp.take_along_axis(jax.nn.log_softmax(logits32), tokens[:, None], -1)[:, 0]
  return tokens, raw_lp, jnp.where(is_greedy, 0.0, proc_lp)
