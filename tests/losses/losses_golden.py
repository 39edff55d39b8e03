"""numpy references shared by the loss tests (float64, written out longhand)."""

import chex
import numpy as np


def log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def log_softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
  """Compares a jax result with a float64 numpy golden value."""
  actual = np.asarray(actual)
  expected = np.asarray(expected, dtype=actual.dtype).reshape(actual.shape)
  chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=atol)


def assert_finite_tree(tree):
  import jax
  for leaf in jax.tree_util.tree_leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf))), tree
