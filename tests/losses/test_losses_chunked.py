"""The LM head over chunks of tokens equals the unchunked logits path, in
value and in gradient (w.r.t. hidden states and head)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import losses
from losses_golden import log_softmax

B, T, D, V = 2, 7, 8, 19  # B·T = 14 tokens: chunk sizes 1..16 cover dividing and not


def _inputs(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(B, T, D)), dtype)
  head = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
  mask = jnp.asarray(rng.random((B, T)) < 0.7, jnp.int32)
  return hidden, head, targets, mask


def _unchunked_logps(hidden, head, targets, temperature):
  logits = (hidden @ head.astype(hidden.dtype)).astype(jnp.float32) / temperature
  return losses.token_logprobs(logits, targets)


@pytest.mark.parametrize("chunk", [0, 1, 3, 4, 7, 14, 16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_token_logprobs_value_and_grads(chunk, temperature):
  hidden, head, targets, mask = _inputs()
  # A weighted sum: every position's gradient is distinct.
  w = jnp.asarray(np.random.default_rng(1).normal(size=(B, T)), jnp.float32)

  def objective(fn):
    return lambda h, wv: jnp.sum(w * fn(h, wv))

  chunked = lambda h, wv: losses.chunked_token_logprobs(h, wv, targets, chunk_size=chunk,
                                                        temperature=temperature)
  plain = lambda h, wv: _unchunked_logps(h, wv, targets, temperature)
  got, expected = chunked(hidden, head), plain(hidden, head)
  assert got.shape == (B, T) and got.dtype == jnp.float32
  golden = np.take_along_axis(
      log_softmax(np.asarray(hidden, np.float64) @ np.asarray(head, np.float64) / temperature),
      np.asarray(targets)[..., None], -1)[..., 0]
  chex.assert_trees_all_close(got, golden, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-6)
  g_got = jax.grad(objective(chunked), argnums=(0, 1))(hidden, head)
  g_exp = jax.grad(objective(plain), argnums=(0, 1))(hidden, head)
  chex.assert_trees_all_close(g_got, g_exp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [0, 3, 5])
@pytest.mark.parametrize("normalize", ["token", "sequence"])
def test_chunked_sft_loss_equals_sft_loss(chunk, normalize):
  hidden, head, targets, mask = _inputs(2)
  # Half the targets are the argmax: token_accuracy is strictly between 0 and 1.
  targets = jnp.where(jnp.arange(T) % 2 == 0, jnp.argmax(hidden @ head, axis=-1), targets)

  def chunked(h, wv):
    return losses.chunked_sft_loss(h, wv, targets, mask, chunk_size=chunk, normalize=normalize)

  def plain(h, wv):
    return losses.sft_loss(h @ wv, targets, mask, normalize=normalize)

  (l1, m1), g1 = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, head)
  (l2, m2), g2 = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hidden, head)
  chex.assert_trees_all_close((l1, m1, g1), (l2, m2, g2), rtol=1e-5, atol=1e-6)
  assert 0 < m1["token_accuracy"] < 1


def test_chunked_token_accuracy_counts_argmax_hits():
  hidden, head, targets, mask = _inputs(3)
  targets = jnp.argmax(hidden @ head, axis=-1).at[0, :3].add(1) % V  # 3 misses on row 0
  mask = jnp.ones((B, T), jnp.int32)
  _, metrics = losses.chunked_sft_loss(hidden, head, targets, mask, chunk_size=4)
  np.testing.assert_allclose(metrics["token_accuracy"], (B * T - 3) / (B * T), rtol=1e-6)


@pytest.mark.parametrize("chunk", [0, 3, 5])
def test_chunked_token_unlikelihood_equals_unchunked(chunk):
  hidden, head, _, mask = _inputs(4)
  # Few distinct ids, so rows repeat tokens and every position has candidates.
  targets = jnp.asarray(np.random.default_rng(5).integers(0, 4, size=(B, T)), jnp.int32)

  def chunked(h, wv):
    return losses.chunked_token_unlikelihood_loss(h, wv, targets, mask, alpha=0.5,
                                                  chunk_size=chunk)

  def plain(h, wv):
    return losses.token_unlikelihood_loss(h @ wv, targets, mask, alpha=0.5)

  (l1, m1), g1 = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, head)
  (l2, m2), g2 = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hidden, head)
  assert m2["candidates_per_token"] > 0 and m2["ul_loss"] > 0
  chex.assert_trees_all_close((l1, m1, g1), (l2, m2, g2), rtol=1e-5, atol=1e-6)


def test_bf16_hidden_float32_head_grad_stays_float32():
  # Float32 master head, bf16 compute: the head's gradient comes back in
  # float32 (the chunks are summed in it) and matches the unchunked one.
  hidden, head, targets, mask = _inputs(6, dtype=jnp.bfloat16)

  def f(chunk):
    return jax.grad(lambda wv: jnp.sum(losses.chunked_token_logprobs(
        hidden, wv, targets, chunk_size=chunk)))(head)

  g_chunked, g_plain = f(4), f(0)
  assert g_chunked.dtype == jnp.float32
  chex.assert_trees_all_close(g_chunked, g_plain, rtol=2e-2, atol=2e-2)


def test_chunked_map_keeps_no_full_logits_in_the_backward():
  # The residuals the backward keeps are the chunk inputs, not [N, V] logits:
  # no intermediate of the jaxpr's forward+backward has N·V elements.
  n_tok, d, v = 64, 4, 1000
  hidden = jnp.ones((1, n_tok, d))
  head = jnp.ones((d, v))
  targets = jnp.zeros((1, n_tok), jnp.int32)

  def sizes(chunk):
    f = lambda h, wv: jnp.sum(losses.chunked_token_logprobs(h, wv, targets, chunk_size=chunk))
    jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(hidden, head)
    out = set()

    def walk(jp):
      for eqn in jp.eqns:
        for var in eqn.outvars:
          out.add(int(np.prod(var.aval.shape)))
        for p in eqn.params.values():
          for sub in (p if isinstance(p, (tuple, list)) else [p]):
            if hasattr(sub, "jaxpr"):
              walk(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub.jaxpr.jaxpr)
            elif hasattr(sub, "eqns"):
              walk(sub)
    walk(jaxpr.jaxpr)
    return out

  assert n_tok * v in sizes(0)
  assert max(sizes(16)) < n_tok * v
