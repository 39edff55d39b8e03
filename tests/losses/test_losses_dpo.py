import functools

import jax
import numpy as np
import pytest

from rankjax import losses
from losses_golden import (assert_close, assert_finite_tree, log_sigmoid,
                           sigmoid)

B = 6
BETA = 0.3
ALL_TYPES = ("sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair",
             "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop",
             "sigmoid_norm")


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  pc, pr, rc, rr = rng.normal(-30.0, 4.0, size=(4, B)).astype(np.float32)
  lc, lr = rng.integers(5, 40, size=(2, B)).astype(np.float32)
  return pc, pr, rc, rr, lc, lr


def _np_dpo(loss_type, pc, pr, rc, rr, lc, lr, beta, eps=0.0, tau=0.05):
  """Per-pair losses written from docs/references.md, averaged."""
  f64 = lambda x: np.asarray(x, np.float64)
  sc, sr = f64(pc) - f64(rc), f64(pr) - f64(rr)
  z = beta * (sc - sr)
  if loss_type == "sigmoid":
    out = -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)
  elif loss_type == "robust":
    out = (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps)
  elif loss_type == "hinge":
    out = np.maximum(0.0, 1 - z)
  elif loss_type == "ipo":
    out = (sc / lc - sr / lr - 1 / (2 * beta)) ** 2
  elif loss_type == "exo_pair":
    eps = eps or 1e-3
    out = (sigmoid(z) * (log_sigmoid(z) - np.log(1 - eps))
           + sigmoid(-z) * (log_sigmoid(-z) - np.log(eps)))
  elif loss_type == "nca_pair":
    out = (-log_sigmoid(beta * sc) - 0.5 * log_sigmoid(-beta * sc)
           - 0.5 * log_sigmoid(-beta * sr))
  elif loss_type == "bco_pair":
    out = -log_sigmoid(beta * sc) - log_sigmoid(-beta * sr)
  elif loss_type == "sppo_hard":
    out = (sc - 1 / (2 * beta)) ** 2 + (sr + 1 / (2 * beta)) ** 2
  elif loss_type == "apo_zero":
    out = (1 - sigmoid(beta * sc)) + sigmoid(beta * sr)
  elif loss_type == "apo_down":
    out = sigmoid(beta * sc) + (1 - sigmoid(z))
  elif loss_type == "discopop":
    m = sigmoid(z / tau)
    out = (1 - m) * (-log_sigmoid(z)) + m * np.exp(-z)
  elif loss_type == "sigmoid_norm":
    out = -log_sigmoid(beta * (sc / lc - sr / lr))
  else:
    raise AssertionError(loss_type)
  return out.mean()


def test_every_reference_type_is_registered():
  assert set(losses.DPO_LOSS_TYPES) == set(ALL_TYPES)


@pytest.mark.parametrize("loss_type", ALL_TYPES)
def test_dpo_loss_types_golden(loss_type):
  pc, pr, rc, rr, lc, lr = _inputs(1)
  # Keep βΔ of order 1 so no type saturates and the comparison is sharp.
  expected = _np_dpo(loss_type, pc, pr, rc, rr, lc, lr, BETA)
  fn = jax.jit(functools.partial(losses.dpo_loss, beta=BETA,
                                 loss_type=loss_type))
  loss, metrics = fn(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr)
  assert_close(loss, expected)
  assert_close(metrics[f"loss/{loss_type}"], expected)
  grads = jax.grad(
      lambda a, b: fn(a, b, rc, rr, chosen_lengths=lc,
                      rejected_lengths=lr)[0], argnums=(0, 1))(pc, pr)
  assert_finite_tree(grads)


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "exo_pair"])
def test_dpo_label_smoothing_golden(loss_type):
  pc, pr, rc, rr, lc, lr = _inputs(2)
  expected = _np_dpo(loss_type, pc, pr, rc, rr, lc, lr, BETA, eps=0.1)
  loss, _ = losses.dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type=loss_type,
                            label_smoothing=0.1)
  assert_close(loss, expected)


def test_sigmoid_dpo_at_reference_is_log2():
  pc, pr, _, _, _, _ = _inputs(3)
  loss, metrics = losses.dpo_loss(pc, pr, pc, pr, beta=0.1)
  assert_close(loss, np.log(2.0))
  assert_close(metrics["rewards/margins"], 0.0)


def test_dpo_combined_types_with_weights():
  pc, pr, rc, rr, lc, lr = _inputs(4)
  types, weights = ("sigmoid", "bco_pair", "ipo"), (0.8, 0.2, 1.5)
  expected = sum(w * _np_dpo(t, pc, pr, rc, rr, lc, lr, BETA)
                 for t, w in zip(types, weights))
  fn = jax.jit(functools.partial(losses.dpo_loss, beta=BETA, loss_type=types,
                                 loss_weights=weights))
  loss, metrics = fn(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr)
  assert_close(loss, expected)
  for t in types:
    assert f"loss/{t}" in metrics
  unweighted, _ = losses.dpo_loss(pc, pr, rc, rr, beta=BETA,
                                  loss_type=["sigmoid", "hinge"])
  assert_close(unweighted, _np_dpo("sigmoid", pc, pr, rc, rr, lc, lr, BETA)
               + _np_dpo("hinge", pc, pr, rc, rr, lc, lr, BETA))


def test_dpo_sft_term():
  pc, pr, rc, rr, lc, lr = _inputs(5)
  sft = np.mean(-pc.astype(np.float64) / lc)
  expected = _np_dpo("sigmoid", pc, pr, rc, rr, lc, lr, BETA) + 0.5 * sft
  loss, metrics = jax.jit(functools.partial(
      losses.dpo_loss, beta=BETA, sft_weight=0.5))(
          pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr)
  assert_close(loss, expected)
  assert_close(metrics["loss/sft"], sft)


def test_dpo_reference_free():
  pc, pr, _, _, lc, lr = _inputs(6)
  zeros = np.zeros(B, np.float32)
  expected = _np_dpo("sigmoid", pc, pr, zeros, zeros, lc, lr, BETA)
  loss, metrics = losses.dpo_loss(pc, pr, None, None, beta=BETA,
                                  reference_free=True)
  assert_close(loss, expected)
  assert_close(metrics["rewards/chosen"], BETA * pc.mean())
  # Reference arrays, if given, are ignored.
  loss2, _ = losses.dpo_loss(pc, pr, pc, pr, beta=BETA, reference_free=True)
  assert_close(loss2, expected)


def test_dpo_metrics():
  pc, pr, rc, rr, _, _ = _inputs(7)
  _, m = losses.dpo_loss(pc, pr, rc, rr, beta=BETA)
  rew_c = BETA * (pc.astype(np.float64) - rc)
  rew_r = BETA * (pr.astype(np.float64) - rr)
  assert_close(m["rewards/chosen"], rew_c.mean())
  assert_close(m["rewards/rejected"], rew_r.mean())
  assert_close(m["rewards/margins"], (rew_c - rew_r).mean())
  assert_close(m["rewards/accuracies"], (rew_c > rew_r).mean())
  assert_close(m["logps/chosen"], pc.mean())
  assert_close(m["logps/rejected"], pr.mean())


def test_discopop_is_finite_for_extreme_margins():
  pc = np.array([0.0, -500.0, -1.0], np.float32)
  pr = np.array([-500.0, 0.0, -1.0], np.float32)
  zeros = np.zeros(3, np.float32)
  fn = lambda a: losses.dpo_loss(a, pr, zeros, zeros, beta=1.0,
                                 loss_type="discopop")[0]
  assert_finite_tree((fn(pc), jax.grad(fn)(pc)))


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_unknown_loss_type_lists_supported():
  pc, pr, rc, rr, _, _ = _inputs()
  with pytest.raises(ValueError, match="supported: .*sigmoid.*discopop"):
    losses.dpo_loss(pc, pr, rc, rr, loss_type="dpo++")
  with pytest.raises(ValueError, match="Unknown"):
    losses.dpo_loss(pc, pr, rc, rr, loss_type=("sigmoid", "nope"))


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm"])
def test_length_normalised_types_require_lengths(loss_type):
  pc, pr, rc, rr, _, _ = _inputs()
  with pytest.raises(ValueError, match="chosen_lengths"):
    losses.dpo_loss(pc, pr, rc, rr, loss_type=loss_type)


def test_sft_term_requires_lengths():
  pc, pr, rc, rr, _, _ = _inputs()
  with pytest.raises(ValueError, match="chosen_lengths"):
    losses.dpo_loss(pc, pr, rc, rr, sft_weight=1.0)


def test_shape_mismatch_names_arguments():
  pc, pr, rc, rr, _, _ = _inputs()
  with pytest.raises(ValueError, match="ref_rejected_logps=\\(5,\\)"):
    losses.dpo_loss(pc, pr, rc, rr[:5])
  with pytest.raises(ValueError, match="chosen_lengths"):
    losses.dpo_loss(pc, pr, rc, rr, chosen_lengths=np.ones(3),
                    rejected_lengths=np.ones(3))


def test_weights_must_match_types():
  pc, pr, rc, rr, _, _ = _inputs()
  with pytest.raises(ValueError, match="loss_weights"):
    losses.dpo_loss(pc, pr, rc, rr, loss_type=("sigmoid", "hinge"),
                    loss_weights=(1.0,))


def test_missing_reference_requires_reference_free():
  pc, pr, _, _, _, _ = _inputs()
  with pytest.raises(ValueError, match="reference_free"):
    losses.dpo_loss(pc, pr, None, None)
