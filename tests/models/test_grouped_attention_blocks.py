"""Query-blocked grouped attention (long continuations) equals the one-shot
form, values and gradients, with ragged prefixes and causal, padded
continuations."""

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.models import _transformer as T


def _inputs(seed=0, b=2, g=3, s=5, t=70, kh=2, qg=2, h=8):
  ks = jax.random.split(jax.random.key(seed), 5)
  r, n = b * g, kh * qg
  q = jax.random.normal(ks[0], (r, t, n, h))
  kp, vp = (jax.random.normal(k, (b, s, kh, h)) for k in ks[1:3])
  ko, vo = (jax.random.normal(k, (r, t, kh, h)) for k in ks[3:5])
  prefix_mask = jnp.arange(s)[None, :] >= jnp.asarray([[0], [2]])   # left padding
  lengths = jnp.asarray([t, t - 9, 40, t, 1, t - 30])                # ragged continuations
  real = jnp.arange(t)[None, :] < lengths[:, None]
  causal = jnp.tril(jnp.ones((t, t), bool))
  mask = causal[None] & real[:, None, :] & real[:, :, None]
  return q, kp, vp, ko, vo, prefix_mask, mask, real


def test_blocks_equal_one_shot_values_and_grads():
  q, kp, vp, ko, vo, pm, mask, real = _inputs()
  one_shot = lambda *a: T._grouped_attention(*a, pm, mask)
  blocked = lambda *a: T.grouped_attention(*a, pm, mask, block=16)   # 5 blocks, last partial
  np.testing.assert_allclose(blocked(q, kp, vp, ko, vo), one_shot(q, kp, vp, ko, vo),
                             rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(9), q.shape) * real[:, :, None, None]
  loss = lambda f: lambda *a: jnp.sum(f(*a) * w)
  g_blocked = jax.grad(loss(blocked), argnums=(0, 1, 2, 3, 4))(q, kp, vp, ko, vo)
  g_one = jax.grad(loss(one_shot), argnums=(0, 1, 2, 3, 4))(q, kp, vp, ko, vo)
  for a, b in zip(g_blocked, g_one):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_short_continuations_take_the_one_shot_path():
  q, kp, vp, ko, vo, pm, mask, _ = _inputs(t=12)
  np.testing.assert_array_equal(T.grouped_attention(q, kp, vp, ko, vo, pm, mask),
                                T._grouped_attention(q, kp, vp, ko, vo, pm, mask))


def test_long_continuations_match_the_full_forward():
  """A model's grouped forward over 150 continuation tokens (two query
  blocks) equals its plain forward over prefix ++ continuation."""
  from rankjax import models, testing
  g, vocab, n = 2, 61, 150
  model = testing.perturbed(testing.tiny_model("llama", seed=4, vocab_size=vocab, hidden_size=32,
                                               num_layers=2, num_heads=4, num_kv_heads=2,
                                               head_dim=8, intermediate_size=64), seed=5)
  rng = np.random.RandomState(0)
  pmask = jnp.asarray([[1, 1, 1, 1], [0, 0, 1, 1]], jnp.int32)
  prompt = jnp.asarray(rng.randint(1, vocab, pmask.shape), jnp.int32)
  lengths = np.array([n, 131, 40, n - 1])
  cmask = jnp.asarray(np.arange(n)[None, :] < lengths[:, None], jnp.int32)
  completion = jnp.asarray(rng.randint(1, vocab, cmask.shape), jnp.int32)
  prompt_h, comp_h = model.grouped_hidden_states(prompt, pmask, completion, cmask)
  tokens = jnp.concatenate([jnp.repeat(prompt, g, axis=0), completion], 1)
  mask = jnp.concatenate([jnp.repeat(pmask, g, axis=0), cmask], 1)
  full = model.hidden_states(tokens, positions=models.default_positions(mask),
                             attention_mask=mask)
  real = np.asarray(cmask).astype(bool)
  np.testing.assert_allclose(np.asarray(comp_h)[real], np.asarray(full[:, 4:])[real],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(prompt_h)[np.asarray(pmask, bool)],
                             np.asarray(full[::g, :4])[np.asarray(pmask, bool)],
                             rtol=1e-4, atol=1e-4)
