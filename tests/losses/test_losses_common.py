import jax
import jax.numpy as jnp
import numpy as np

from rankjax import losses
from losses_golden import assert_close, log_softmax


def test_token_logprobs_matches_numpy_and_upcasts():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 5))
  expected = np.take_along_axis(log_softmax(logits), targets[..., None],
                                axis=-1)[..., 0]
  got = losses.token_logprobs(jnp.asarray(logits), jnp.asarray(targets))
  assert got.dtype == jnp.float32
  assert_close(got, expected)
  got_bf16 = losses.token_logprobs(jnp.asarray(logits, jnp.bfloat16),
                                   jnp.asarray(targets))
  assert got_bf16.dtype == jnp.float32
  assert_close(got_bf16, expected, rtol=0, atol=5e-2)


def test_masked_sum_and_mean():
  x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  mask = np.array([[1, 1, 0], [0, 1, 1]])
  assert_close(losses.masked_sum(x, mask), 1 + 2 + 5 + 6)
  assert_close(losses.masked_sum(x, mask, axis=-1), [3.0, 11.0])
  assert_close(losses.masked_mean(x, mask), 14.0 / 4)
  assert_close(losses.masked_mean(x, mask, axis=-1), [1.5, 5.5])
  assert_close(losses.masked_mean(x, mask.astype(bool), axis=0),
               [1.0, 3.5, 6.0])


def test_masked_reductions_ignore_garbage_under_the_mask():
  x = jnp.array([1.0, jnp.inf, jnp.nan, -jnp.inf])
  mask = jnp.array([1, 0, 0, 0])
  assert_close(losses.masked_sum(x, mask), 1.0)
  assert_close(losses.masked_mean(x, mask), 1.0)


def test_masked_mean_empty_mask_is_zero_with_finite_grad():
  x = jnp.arange(6.0).reshape(2, 3)
  empty = jnp.zeros((2, 3))
  assert_close(losses.masked_mean(x, empty), 0.0)
  assert_close(losses.masked_mean(x, empty.at[0, 1].set(1), axis=-1),
               [1.0, 0.0])
  grad = jax.grad(lambda x: losses.masked_mean(x, empty))(x)
  assert_close(grad, np.zeros((2, 3)))


def test_sequence_logprobs():
  lp = np.array([[-1.0, -2.0, -3.0], [-0.5, -0.25, -9.0]])
  mask = np.array([[0, 1, 1], [1, 1, 0]])
  assert_close(losses.sequence_logprobs(lp, mask), [-5.0, -0.75])
