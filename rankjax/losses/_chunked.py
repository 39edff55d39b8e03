"""Log-probs straight from hidden states, the LM head run over chunks of tokens.

A step that scores targets would otherwise build float32 logits [B, T, V]
and keep them (or their softmax) for the backward: at V = 152k and
B·T = 32k tokens that is 20 GB per copy. Here the B·T tokens are cut into
chunks of `chunk_size` (the last one padded); `jax.lax.map` runs the head
matmul, the float32 log-softmax and a loss's per-token statistics on one
chunk at a time, and `jax.checkpoint` around the chunk body makes the
backward recompute each chunk's logits instead of saving them. Peak logits
memory is chunk_size · V floats (times a small constant), not B·T·V; the
price is one more head matmul forward (2·N·D·V of the step's 6·N·D·V).

`chunk_size=0` (or ≥ B·T) runs the same body once on all tokens: the
[B·T, V] logits of the unchunked path, no map, no recompute.

Axis letters: B batch, T sequence, D model width, V vocab, N = B·T tokens
(flattened), C tokens per chunk, K per-token ids (candidates).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rankjax.losses import _common

Array = jax.Array


def head_logits(hidden_nd: Array, head_dv: Array, temperature=1.0) -> Array:
  """float32[N, V] logits / temperature: hidden [N, D] @ head [D, V].

  The matmul runs in the hidden states' (compute) dtype, as
  `Transformer.logits` does; the head is cast here, inside the chunk, so its
  gradient reaches the caller in the head's own dtype and the map sums the
  chunks' contributions in it (float32 master weights stay float32). The
  logits are upcast to float32 before the division and the log-softmax.
  """
  logits_nv = hidden_nd @ head_dv.astype(hidden_nd.dtype)
  return logits_nv.astype(jnp.float32) / temperature


def map_token_chunks(fn: Callable[[Array, Any], Any], hidden_btd: Array, head_dv: Array,
                     per_token: Any, *, chunk_size: int, temperature=1.0) -> Any:
  """fn(logits_cv, per_token_chunk) over chunks of C = chunk_size tokens.

  Args:
    fn: per-chunk statistics: float32 logits [C, V] and `per_token` cut to
      the chunk's tokens ([C, ...] leaves) -> a pytree of [C, ...] arrays.
      It must treat padding tokens (zero hidden state, zero ids) harmlessly;
      their outputs are dropped.
    hidden_btd: [B, T, D] final hidden states.
    head_dv: [D, V] LM head (any float dtype).
    per_token: a pytree of [B, T, ...] arrays (target ids, candidate ids).
    chunk_size: tokens per chunk; 0 = all at once.
    temperature: logits are divided by it (sampling temperature).

  Returns:
    fn's outputs with [B, T, ...] leaves.
  """
  b, t, d = hidden_btd.shape
  n = b * t
  flat = lambda x: x.reshape(n, *x.shape[2:])
  hidden_nd, extra = hidden_btd.reshape(n, d), jax.tree.map(flat, per_token)

  def body(args):
    h_cd, x = args
    return fn(head_logits(h_cd, head_dv, temperature), x)

  if not chunk_size or chunk_size >= n:
    out = body((hidden_nd, extra))
  else:
    k = -(-n // chunk_size)
    pad = k * chunk_size - n

    def split(x):  # [N, ...] -> [k, C, ...], the last chunk zero-padded
      x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
      return x.reshape(k, chunk_size, *x.shape[1:])

    # checkpoint: the backward recomputes each chunk's logits rather than
    # saving k of them (which would be the [N, V] array again).
    # prevent_cse=False: inside a scan, CSE across iterations cannot happen.
    out = jax.lax.map(jax.checkpoint(body, prevent_cse=False),
                      (split(hidden_nd), jax.tree.map(split, extra)))
    out = jax.tree.map(lambda y: y.reshape(k * chunk_size, *y.shape[2:])[:n], out)
  return jax.tree.map(lambda y: y.reshape(b, t, *y.shape[1:]), out)


def chunked_token_logprobs(hidden_btd: Array, head_dv: Array, targets_bt: Array, *,
                           chunk_size: int = 0, temperature=1.0) -> Array:
  """log p(target | context) at `temperature`, per position: float32[B, T].

  Equal (value and gradient w.r.t. hidden and head, to float32 rounding) to
  `token_logprobs((hidden @ head).astype(f32) / temperature, targets)`,
  without the [B, T, V] logits: see the module docstring.

  Args:
    hidden_btd: [B, T, D] final hidden states predicting targets_bt.
    head_dv: [D, V] LM head.
    targets_bt: int[B, T] token ids to score.
    chunk_size: tokens per chunk; 0 = unchunked.
    temperature: logits are divided by it before the log-softmax.
  """
  return map_token_chunks(_common.token_logprobs, hidden_btd, head_dv, targets_bt,
                          chunk_size=chunk_size, temperature=temperature)
