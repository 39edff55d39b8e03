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
             "sigmoid_norm", "simpo", "cpo", "orpo")
REF_FREE_TYPES = ("simpo", "cpo", "orpo")
SIMPO_GAMMA = 0.5


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  pc, pr, rc, rr = rng.normal(-30.0, 4.0, size=(4, B)).astype(np.float32)
  lc, lr = rng.integers(5, 40, size=(2, B)).astype(np.float32)
  return pc, pr, rc, rr, lc, lr


def _np_dpo(loss_type, pc, pr, rc, rr, lc, lr, beta, eps=0.0, tau=0.05,
            gamma=SIMPO_GAMMA):
  """Per-pair losses written from docs/references.md, averaged.

  simpo, cpo and orpo from their papers (arXiv 2405.14734, 2401.08417,
  2403.07691) as TRL's CPOTrainer / ORPOTrainer compute them: policy
  log-probs only, rc and rr unused.
  """
  f64 = lambda x: np.asarray(x, np.float64)
  sc, sr = f64(pc) - f64(rc), f64(pr) - f64(rr)
  z = beta * (sc - sr)
  mean_c, mean_r = f64(pc) / f64(lc), f64(pr) / f64(lr)  # p̄: per-token log π
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
  elif loss_type == "simpo":
    x = beta * (mean_c - mean_r) - gamma
    out = -(1 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x)
  elif loss_type == "cpo":
    x = beta * (f64(pc) - f64(pr))
    out = -(1 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x) - mean_c
  elif loss_type == "orpo":
    log_odds_c = mean_c - np.log1p(-np.exp(mean_c))
    log_odds_r = mean_r - np.log1p(-np.exp(mean_r))
    out = -mean_c - beta * log_sigmoid(log_odds_c - log_odds_r)
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


@pytest.mark.parametrize("loss_type",
                         ["sigmoid", "robust", "exo_pair", "simpo", "cpo"])
def test_dpo_label_smoothing_golden(loss_type):
  pc, pr, rc, rr, lc, lr = _inputs(2)
  expected = _np_dpo(loss_type, pc, pr, rc, rr, lc, lr, BETA, eps=0.1)
  loss, _ = losses.dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type=loss_type,
                            label_smoothing=0.1, chosen_lengths=lc,
                            rejected_lengths=lr)
  assert_close(loss, expected)
  assert np.abs(expected - _np_dpo(loss_type, pc, pr, rc, rr, lc, lr,
                                   BETA)) > 1e-3  # ε matters here


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


@pytest.mark.parametrize("loss_type", ALL_TYPES)
def test_reference_free_equals_zero_reference(loss_type):
  pc, pr, rc, rr, lc, lr = _inputs(6)
  zeros = np.zeros(B, np.float32)
  kw = dict(beta=BETA, loss_type=loss_type, chosen_lengths=lc,
            rejected_lengths=lr)
  free, m_free = losses.dpo_loss(pc, pr, rc, rr, reference_free=True, **kw)
  at_zero, m_zero = losses.dpo_loss(pc, pr, zeros, zeros, **kw)
  assert_close(free, at_zero)
  assert_close(free, _np_dpo(loss_type, pc, pr, zeros, zeros, lc, lr, BETA))
  assert_close(m_free["rewards/chosen"], m_zero["rewards/chosen"])


# --------------------------------------------------------------------------
# The reference-free family: SimPO, CPO, ORPO
# --------------------------------------------------------------------------


def test_reference_free_types_constant():
  assert losses.REFERENCE_FREE_LOSS_TYPES == REF_FREE_TYPES
  assert set(REF_FREE_TYPES) <= set(losses.DPO_LOSS_TYPES)


@pytest.mark.parametrize("loss_type", REF_FREE_TYPES)
def test_reference_free_types_ignore_reference(loss_type):
  pc, pr, rc, rr, lc, lr = _inputs(8)
  fn = jax.jit(functools.partial(losses.dpo_loss, beta=BETA,
                                 loss_type=loss_type, chosen_lengths=lc,
                                 rejected_lengths=lr))
  loss, _ = fn(pc, pr, rc, rr)
  expected = _np_dpo(loss_type, pc, pr, rc, rr, lc, lr, BETA)
  assert_close(loss, expected)
  # Any reference, or none, gives the same loss and the same gradient.
  grad = lambda a, b: jax.grad(lambda x: fn(x, pr, a, b)[0])(pc)
  for ref_c, ref_r in ((rr, rc), (rc + 7.0, rr - 3.0), (None, None)):
    loss2, _ = fn(pc, pr, ref_c, ref_r)
    assert_close(loss2, expected)
    assert_close(grad(ref_c, ref_r), grad(rc, rr))


@pytest.mark.parametrize("loss_type", REF_FREE_TYPES)
def test_reference_free_types_accept_no_reference(loss_type):
  pc, pr, _, _, lc, lr = _inputs(9)
  zeros = np.zeros(B, np.float32)
  loss, m = losses.dpo_loss(pc, pr, None, None, beta=BETA, loss_type=loss_type,
                            chosen_lengths=lc, rejected_lengths=lr)
  assert_close(loss, _np_dpo(loss_type, pc, pr, zeros, zeros, lc, lr, BETA))
  # Reward metrics fall back to log π_ref := 0, i.e. β·p.
  assert_close(m["rewards/chosen"], BETA * pc.astype(np.float64).mean())
  assert_close(m["rewards/rejected"], BETA * pr.astype(np.float64).mean())
  assert_close(m["rewards/margins"],
               BETA * (pc.astype(np.float64) - pr).mean())


def test_reference_free_types_mixed_with_reference():
  pc, pr, rc, rr, lc, lr = _inputs(10)
  kw = dict(beta=BETA, chosen_lengths=lc, rejected_lengths=lr)
  # All reference-free: None is fine, even combined.
  loss, _ = losses.dpo_loss(pc, pr, None, None,
                            loss_type=("simpo", "orpo"), **kw)
  assert_close(loss, _np_dpo("simpo", pc, pr, rc, rr, lc, lr, BETA)
               + _np_dpo("orpo", pc, pr, rc, rr, lc, lr, BETA))
  # With a type that needs the reference, it is still required.
  for types in ("sigmoid", ("simpo", "sigmoid"), ("orpo", "ipo")):
    with pytest.raises(ValueError, match="reference_free"):
      losses.dpo_loss(pc, pr, None, None, loss_type=types, **kw)
  # Given, it is used by the reference type and ignored by the other.
  types, weights = ("cpo", "sigmoid"), (1.0, 0.5)
  loss, m = losses.dpo_loss(pc, pr, rc, rr, loss_type=types,
                            loss_weights=weights, **kw)
  assert_close(loss, sum(w * _np_dpo(t, pc, pr, rc, rr, lc, lr, BETA)
                         for t, w in zip(types, weights)))
  assert_close(m["rewards/chosen"], BETA * (pc.astype(np.float64) - rc).mean())
  with pytest.raises(ValueError, match="or neither"):
    losses.dpo_loss(pc, pr, rc, None, loss_type="simpo", **kw)


def test_simpo_gamma_shifts_the_margin():
  pc, pr, rc, rr, lc, lr = _inputs(11)
  kw = dict(beta=BETA, loss_type="simpo", chosen_lengths=lc,
            rejected_lengths=lr)
  values = []
  for gamma in (0.0, 0.5, 2.0):
    loss, _ = losses.dpo_loss(pc, pr, None, None, simpo_gamma=gamma, **kw)
    assert_close(loss, _np_dpo("simpo", pc, pr, rc, rr, lc, lr, BETA,
                               gamma=gamma))
    values.append(float(loss))
  assert values[0] < values[1] < values[2]  # a larger target margin costs more
  # γ = 0 is sigmoid DPO on per-token policy log-probs (no reference).
  norm, _ = losses.dpo_loss(pc, pr, None, None, reference_free=True,
                            **{**kw, "loss_type": "sigmoid_norm"})
  assert_close(values[0], norm)
  # Raising p̄_c by γ/β exactly pays the margin back.
  gamma = 2.0
  shifted, _ = losses.dpo_loss(pc + gamma / BETA * lc, pr, None, None,
                               simpo_gamma=gamma, **kw)
  assert_close(shifted, values[0], rtol=1e-4)


def test_cpo_is_sigmoid_on_policy_logps_plus_nll():
  pc, pr, rc, rr, lc, lr = _inputs(12)
  kw = dict(beta=BETA, chosen_lengths=lc, rejected_lengths=lr)
  cpo, _ = losses.dpo_loss(pc, pr, rc, rr, loss_type="cpo", **kw)
  sig_sft, _ = losses.dpo_loss(pc, pr, None, None, loss_type="sigmoid",
                               reference_free=True, sft_weight=1.0, **kw)
  assert_close(cpo, sig_sft)


def test_orpo_is_finite_at_extreme_logps():
  # p̄ = 0 (probability 1: log(1 − e^p̄) is clipped) and very negative p̄.
  pc = np.array([0.0, -1e4, -1e-7, -3.0], np.float32)
  pr = np.array([-1e4, 0.0, -3.0, -1e-7], np.float32)
  lc = lr = np.array([5.0, 5.0, 1.0, 1.0], np.float32)
  kw = dict(beta=BETA, loss_type="orpo", chosen_lengths=lc,
            rejected_lengths=lr)
  fn = lambda a, b: losses.dpo_loss(a, b, None, None, **kw)[0]
  loss = fn(pc, pr)
  grads = jax.grad(fn, argnums=(0, 1))(pc, pr)
  assert_finite_tree((loss, grads))
  # Golden with p = e^p̄ clipped at 1 − 1e-5, as log1m_prob does.
  mean_c, mean_r = pc.astype(np.float64) / lc, pr.astype(np.float64) / lr
  log1m = lambda m: np.log1p(-np.exp(np.minimum(m, np.log1p(-1e-5))))
  odds = (mean_c - log1m(mean_c)) - (mean_r - log1m(mean_r))
  assert_close(loss, np.mean(-mean_c - BETA * log_sigmoid(odds)), rtol=1e-4)
  # The NLL term keeps pulling p̄_c up even where the odds term saturates.
  assert np.all(np.asarray(grads[0]) < 0)


@pytest.mark.parametrize("loss_type", REF_FREE_TYPES)
def test_reference_free_types_gradients_finite(loss_type):
  pc = np.array([0.0, -500.0, -1.0, -40.0], np.float32)
  pr = np.array([-500.0, 0.0, -1.0, -0.5], np.float32)
  lc = lr = np.array([1.0, 3.0, 0.0, 20.0], np.float32)  # 0: empty completion
  fn = lambda a, b: losses.dpo_loss(a, b, None, None, beta=1.0,
                                    loss_type=loss_type, chosen_lengths=lc,
                                    rejected_lengths=lr)[0]
  assert_finite_tree((fn(pc, pr), jax.grad(fn, argnums=(0, 1))(pc, pr)))


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


@pytest.mark.parametrize("loss_type",
                         ["ipo", "sigmoid_norm", "simpo", "cpo", "orpo"])
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
