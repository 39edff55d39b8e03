import functools

import jax
import numpy as np

from rankjax import losses
from losses_golden import (assert_close, assert_finite_tree, log_sigmoid,
                           sigmoid)

# --------------------------------------------------------------------------
# reward_model_loss
# --------------------------------------------------------------------------


def test_reward_model_loss_with_margin_and_centering():
  rng = np.random.default_rng(0)
  rc, rr, m = rng.normal(size=(3, 6)).astype(np.float32)
  expected = (np.mean(-log_sigmoid(rc - rr - m))
              + 0.01 * np.mean((rc.astype(np.float64) + rr) ** 2))
  fn = jax.jit(functools.partial(losses.reward_model_loss, center_coef=0.01))
  loss, metrics = fn(rc, rr, margin_b=m)
  assert_close(loss, expected)
  assert_close(metrics["accuracy"], np.mean(rc > rr))
  assert_close(metrics["margin"], np.mean(rc - rr))
  assert_close(metrics["rewards/chosen"], rc.mean())
  assert_close(metrics["rewards/rejected"], rr.mean())
  grads = jax.grad(lambda a, b: fn(a, b, margin_b=m)[0], argnums=(0, 1))(rc, rr)
  assert_finite_tree(grads)


def test_reward_model_loss_plain():
  rc = np.array([1.0, 0.0, -2.0], np.float32)
  rr = np.array([0.0, 0.5, -1.0], np.float32)
  loss, _ = losses.reward_model_loss(rc, rr)
  assert_close(loss, np.mean(-log_sigmoid(rc - rr)))


# --------------------------------------------------------------------------
# kto_loss
# --------------------------------------------------------------------------


def _np_kto(pol, ref, pol_kl, ref_kl, desirable, beta, wd, wu):
  z0 = max(0.0, np.mean(pol_kl.astype(np.float64) - ref_kl))
  s = pol.astype(np.float64) - ref
  per = np.where(desirable, wd * (1 - sigmoid(beta * (s - z0))),
                 wu * (1 - sigmoid(beta * (z0 - s))))
  return per.mean(), z0, s


def _kto_inputs(seed, kl_shift):
  rng = np.random.default_rng(seed)
  pol, ref = rng.normal(-20, 3, size=(2, 8)).astype(np.float32)
  ref_kl = rng.normal(-20, 3, size=8).astype(np.float32)
  pol_kl = (ref_kl + kl_shift + rng.normal(0, 0.1, size=8)).astype(np.float32)
  desirable = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
  return pol, ref, pol_kl, ref_kl, desirable


def test_kto_golden_positive_kl():
  pol, ref, pol_kl, ref_kl, des = _kto_inputs(1, kl_shift=2.0)
  expected, z0, s = _np_kto(pol, ref, pol_kl, ref_kl, des, 0.2, 1.5, 0.7)
  assert z0 > 0
  fn = jax.jit(functools.partial(losses.kto_loss, beta=0.2,
                                 desirable_weight=1.5, undesirable_weight=0.7))
  loss, metrics = fn(pol, ref, pol_kl, ref_kl, des)
  assert_close(loss, expected)
  assert_close(metrics["kl"], z0)
  assert_close(metrics["rewards/chosen"], 0.2 * s[des].mean())
  assert_close(metrics["rewards/rejected"], 0.2 * s[~des].mean())
  assert_close(metrics["logps/chosen"], pol[des].mean())
  assert_close(metrics["count/desirable"], des.sum())


def test_kto_reference_point_clamped_at_zero():
  pol, ref, pol_kl, ref_kl, des = _kto_inputs(2, kl_shift=-3.0)
  expected, z0, _ = _np_kto(pol, ref, pol_kl, ref_kl, des, 0.1, 1.0, 1.0)
  assert z0 == 0.0
  loss, metrics = losses.kto_loss(pol, ref, pol_kl, ref_kl, des)
  assert_close(metrics["kl"], 0.0)
  assert_close(loss, expected)


def test_kto_no_gradient_through_reference_point():
  pol, ref, pol_kl, ref_kl, des = _kto_inputs(3, kl_shift=2.0)
  grad_fn = jax.jit(jax.grad(
      lambda p, pk: losses.kto_loss(p, ref, pk, ref_kl, des)[0], argnums=(0, 1)))
  g_policy, g_kl = grad_fn(pol, pol_kl)
  assert_close(g_kl, np.zeros(8))
  assert np.abs(np.asarray(g_policy)).min() > 0
  # d/ds of each term with z0 held fixed, divided by the batch size.
  _, z0, s = _np_kto(pol, ref, pol_kl, ref_kl, des, 0.1, 1.0, 1.0)
  sd, su = sigmoid(0.1 * (s - z0)), sigmoid(0.1 * (z0 - s))
  expected = np.where(des, -0.1 * sd * (1 - sd), 0.1 * su * (1 - su)) / 8
  assert_close(g_policy, expected)


def test_kto_single_class_batch_metrics_are_zero_not_nan():
  pol, ref, pol_kl, ref_kl, _ = _kto_inputs(4, kl_shift=0.5)
  des = np.ones(8, bool)
  loss, metrics = losses.kto_loss(pol, ref, pol_kl, ref_kl, des)
  assert_finite_tree((loss, metrics))
  assert_close(metrics["rewards/rejected"], 0.0)
  assert_close(metrics["logps/rejected"], 0.0)
