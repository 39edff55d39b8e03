import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import losses
from losses_golden import assert_close, assert_finite_tree

B, K = 5, 6
BETA = 0.3
ALL_TYPES = ("plackett_luce", "lipo_lambda", "softmax")
# Valid candidates per list: full, partial, a single pair, and one list with a
# single candidate (uninformative).
VALID_K = (6, 4, 3, 2, 1)


@functools.partial(jax.jit, static_argnames=(
    "loss_type", "loss_weights", "target_temperature", "reference_free"))
def _run(policy, ref, scores, mask, **kw):
  """((loss, metrics), (d/d policy, d/d ref)), jitted.

  One compiled entry point shared by the tests: on CPU, eager dispatch of the
  many small ops costs more than compiling each configuration once.
  """
  fn = lambda p, r: losses.listwise_loss(p, r, scores, mask, **kw)
  return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(policy, ref)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  policy, ref = rng.normal(-30.0, 4.0, size=(2, B, K)).astype(np.float32)
  # Small integer scores: many ties, and LiPO gains 2^ψ − 1 of order 1-10.
  scores = rng.integers(0, 4, size=(B, K)).astype(np.float32)
  mask = np.zeros((B, K), bool)
  for b, n in enumerate(VALID_K):
    mask[b, rng.permutation(K)[:n]] = True
  # The two-candidate list must be ordered to be informative.
  pair = np.flatnonzero(mask[3])
  scores[3, pair] = (2.0, 1.0)
  return policy, ref, scores, mask


# --------------------------------------------------------------------------
# numpy references, float64, one list at a time
# --------------------------------------------------------------------------


def _np_plackett_luce(z, psi):
  out = 0.0
  for i in range(len(z)):
    denom = np.exp(z[i])
    for j in range(len(z)):
      if psi[j] < psi[i]:
        denom += np.exp(z[j])
    out -= z[i] - np.log(denom)
  return out


def _np_lipo_lambda(z, psi):
  n = len(z)
  tau = np.ones(n)
  for i in range(n):
    for j in range(n):
      if z[j] > z[i] or (z[j] == z[i] and j < i):
        tau[i] += 1
  gain = 2.0 ** psi - 1.0
  inv_d = 1.0 / np.log2(1.0 + tau)
  out = 0.0
  for i in range(n):
    for j in range(n):
      if psi[i] > psi[j]:
        delta = abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j])
        out -= delta * -np.logaddexp(0.0, -(z[i] - z[j]))
  return out


def _np_softmax(z, psi, temperature):
  if temperature == 0:
    p = (psi == psi.max()).astype(np.float64)
  else:
    p = np.exp((psi - psi.max()) / temperature)
  p /= p.sum()
  log_q = z - z.max() - np.log(np.sum(np.exp(z - z.max())))
  out = 0.0
  for i in range(len(z)):
    out -= p[i] * log_q[i]
  return out


def _np_listwise(loss_type, policy, ref, scores, mask, beta,
                 temperature=1.0):
  """Mean of the per-list losses over the informative lists."""
  total, count = 0.0, 0
  for b in range(policy.shape[0]):
    idx = np.flatnonzero(mask[b])
    z = beta * (np.float64(policy[b, idx]) - np.float64(ref[b, idx]))
    psi = np.float64(scores[b, idx])
    if len(idx) < 2 or psi.max() == psi.min():
      continue
    if loss_type == "plackett_luce":
      total += _np_plackett_luce(z, psi)
    elif loss_type == "lipo_lambda":
      total += _np_lipo_lambda(z, psi)
    elif loss_type == "softmax":
      total += _np_softmax(z, psi, temperature)
    else:
      raise AssertionError(loss_type)
    count += 1
  return total / max(count, 1)


def _np_listmle_sorted(z, psi):
  """Textbook ListMLE: −Σ_t [z_π(t) − log Σ_{u ≥ t} e^{z_π(u)}], π by ψ desc."""
  order = np.argsort(-psi, kind="stable")
  zs = np.float64(z[order])
  out = 0.0
  for t in range(len(zs)):
    out -= zs[t] - np.log(np.sum(np.exp(zs[t:])))
  return out


# --------------------------------------------------------------------------
# Golden values
# --------------------------------------------------------------------------


def test_every_type_is_registered():
  assert set(losses.LISTWISE_LOSS_TYPES) == set(ALL_TYPES)


@pytest.mark.parametrize("loss_type", ALL_TYPES)
def test_listwise_golden(loss_type):
  policy, ref, scores, mask = _inputs(1)
  expected = _np_listwise(loss_type, policy, ref, scores, mask, BETA)
  (loss, metrics), grads = _run(policy, ref, scores, mask, beta=BETA,
                                loss_type=loss_type)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  assert_close(loss, expected)
  assert_close(metrics[f"loss/{loss_type}"], expected)
  assert_close(metrics["loss"], expected)
  assert_finite_tree(grads)
  for g in grads:
    assert np.all(np.asarray(g)[~mask] == 0.0)


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_softmax_target_temperature_golden(temperature):
  policy, ref, scores, mask = _inputs(2)
  expected = _np_listwise("softmax", policy, ref, scores, mask, BETA,
                          temperature)
  (loss, _), _ = _run(policy, ref, scores, mask, beta=BETA,
                      loss_type="softmax", target_temperature=temperature)
  assert_close(loss, expected)


def test_lipo_lambda_ties_in_z_break_by_index():
  # At the reference every z is 0: τ is the index order among valid items.
  policy, _, scores, mask = _inputs(3)
  expected = _np_listwise("lipo_lambda", policy, policy, scores, mask, BETA)
  assert expected > 0
  (loss, metrics), _ = _run(policy, policy, scores, mask, beta=BETA,
                            loss_type="lipo_lambda")
  assert_close(loss, expected)
  assert_close(metrics["rewards/accuracies"], 0.0)


def test_plackett_luce_without_ties_is_textbook_listmle():
  rng = np.random.default_rng(4)
  policy, ref = rng.normal(-30.0, 4.0, size=(2, B, K)).astype(np.float32)
  scores = np.stack([rng.permutation(K) for _ in range(B)]).astype(np.float32)
  z = BETA * (np.float64(policy) - ref)
  expected = np.mean([_np_listmle_sorted(z[b], scores[b]) for b in range(B)])
  (loss, _), _ = _run(policy, ref, scores, np.ones((B, K), bool), beta=BETA,
                      loss_type="plackett_luce")
  assert_close(loss, expected)


def test_uninformative_lists_are_not_counted():
  policy, ref, scores, mask = _inputs(5)
  scores[0] = 2.0  # all tied
  expected = {t: _np_listwise(t, policy, ref, scores, mask, BETA)
              for t in ALL_TYPES}
  (loss, metrics), _ = _run(policy, ref, scores, mask, beta=BETA,
                            loss_type=ALL_TYPES, target_temperature=1.0)
  for t in ALL_TYPES:
    assert_close(metrics[f"loss/{t}"], expected[t])
  assert_close(loss, sum(expected.values()))
  # Lists 0 (tied) and 4 (one candidate) are uninformative.
  assert_close(metrics["informative_lists"], 3 / 5)


def test_metrics():
  policy, ref, scores, mask = _inputs(6)
  (_, m), _ = _run(policy, ref, scores, mask, beta=BETA,
                   loss_type="plackett_luce")
  z = BETA * (np.float64(policy) - ref)
  assert_close(m["rewards/mean"], z[mask].mean())
  right = pairs = 0
  for b in range(B):
    for i in range(K):
      for j in range(K):
        if mask[b, i] and mask[b, j] and scores[b, i] > scores[b, j]:
          pairs += 1
          right += z[b, i] > z[b, j]
  assert_close(m["rewards/accuracies"], right / pairs)
  for v in m.values():
    assert v.dtype == jnp.float32 and v.shape == ()


# --------------------------------------------------------------------------
# K = 2 is DPO
# --------------------------------------------------------------------------


def _pairs_as_lists(seed=7):
  rng = np.random.default_rng(seed)
  pc, pr, rc, rr = rng.normal(-30.0, 4.0, size=(4, 8)).astype(np.float32)
  # Chosen in column 0 for some rows and column 1 for the others.
  swap = np.arange(8) % 2 == 1
  col = lambda c, r: np.where(swap[:, None], np.stack([r, c], 1),
                              np.stack([c, r], 1))
  scores = col(np.full(8, 1.5, np.float32), np.full(8, -0.5, np.float32))
  return (pc, pr, rc, rr), (col(pc, pr), col(rc, rr), scores), swap


@jax.jit
def _dpo_and_grads(pc, pr, rc, rr):
  fn = lambda a, b: losses.dpo_loss(a, b, rc, rr, beta=BETA)[0]
  return jax.value_and_grad(fn, argnums=(0, 1))(pc, pr)


@pytest.mark.parametrize("loss_type,temperature",
                         [("plackett_luce", 1.0), ("softmax", 0.0)])
def test_two_candidates_reduce_to_sigmoid_dpo(loss_type, temperature):
  (pc, pr, rc, rr), (policy, ref, scores), swap = _pairs_as_lists()
  dpo, (gc, gr) = _dpo_and_grads(pc, pr, rc, rr)
  (loss, _), (g, _) = _run(policy, ref, scores, np.ones((8, 2), bool),
                           beta=BETA, loss_type=loss_type,
                           target_temperature=temperature)
  assert_close(loss, dpo, atol=1e-6)
  g = np.asarray(g)
  assert_close(np.where(swap, g[:, 1], g[:, 0]), gc, atol=1e-6)
  assert_close(np.where(swap, g[:, 0], g[:, 1]), gr, atol=1e-6)


def test_two_candidates_lipo_is_weighted_sigmoid_dpo():
  (pc, pr, rc, rr), (policy, ref, scores), swap = _pairs_as_lists()
  # Δ = |G(1.5) − G(−0.5)| · |1/log2(2) − 1/log2(3)|; the ranks are 1 and 2.
  delta = (2 ** 1.5 - 2 ** -0.5) * (1.0 - 1.0 / np.log2(3.0))
  dpo, _ = _dpo_and_grads(pc, pr, rc, rr)
  (loss, _), _ = _run(policy, ref, scores, np.ones((8, 2), bool), beta=BETA,
                      loss_type="lipo_lambda")
  assert_close(loss, delta * np.float64(dpo))


# --------------------------------------------------------------------------
# Masks, padding, invariances
# --------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ALL_TYPES)
def test_masked_garbage_changes_nothing(loss_type):
  policy, ref, scores, mask = _inputs(8)
  (clean, _), clean_grads = _run(policy, ref, scores, mask, beta=BETA,
                                 loss_type=loss_type)
  junk = np.array([np.nan, np.inf, -np.inf], np.float32)
  dirty = [x.copy() for x in (policy, ref, scores)]
  for n, x in enumerate(dirty):
    x[~mask] = np.resize(np.roll(junk, n), (~mask).sum())
  (loss, _), grads = _run(*dirty, mask, beta=BETA, loss_type=loss_type)
  assert_close(loss, clean)
  assert_finite_tree(grads)
  for g, g_clean in zip(grads, clean_grads):
    assert np.all(np.asarray(g)[~mask] == 0.0)
    assert_close(g, g_clean)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_all_masked_is_zero_with_zero_grads(temperature):
  policy, ref, scores, _ = _inputs(9)
  policy[0, 0] = np.nan
  mask = np.zeros((B, K), bool)
  (loss, metrics), grads = _run(policy, ref, scores, mask, beta=BETA,
                                loss_type=ALL_TYPES,
                                target_temperature=temperature)
  assert float(loss) == 0.0
  for g in grads:
    assert np.all(np.asarray(g) == 0.0)
  assert_finite_tree(metrics)
  assert float(metrics["informative_lists"]) == 0.0


def test_padding_and_permutation_invariance():
  policy, ref, scores, mask = _inputs(10)
  (_, metrics), _ = _run(policy, ref, scores, mask, beta=BETA,
                         loss_type=ALL_TYPES)
  perm = np.random.default_rng(0).permutation(K)
  pad = lambda x, v: np.concatenate([x[:, perm], np.full((B, 3), v, x.dtype)],
                                    axis=1)
  (_, metrics2), _ = _run(pad(policy, np.nan), pad(ref, 0.0),
                          pad(scores, 9.0), pad(mask, False), beta=BETA,
                          loss_type=ALL_TYPES)
  assert_close(metrics2["loss"], metrics["loss"])
  for t in ALL_TYPES:
    assert_close(metrics2[f"loss/{t}"], metrics[f"loss/{t}"])


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


def test_reference_free():
  policy, _, scores, mask = _inputs(11)
  zeros = np.zeros_like(policy)
  expected = _np_listwise("plackett_luce", policy, zeros, scores, mask, BETA)
  (loss, _), _ = _run(policy, None, scores, mask, beta=BETA,
                      loss_type="plackett_luce", reference_free=True)
  assert_close(loss, expected)
  # A reference array, if given, is ignored.
  (loss2, _), (_, g_ref) = _run(policy, policy, scores, mask, beta=BETA,
                                loss_type="plackett_luce",
                                reference_free=True)
  assert_close(loss2, expected)
  assert np.all(np.asarray(g_ref) == 0.0)


def test_loss_weights_sum():
  policy, ref, scores, mask = _inputs(12)
  weights = (0.5, 2.0, 1.5)
  expected = sum(w * _np_listwise(t, policy, ref, scores, mask, BETA)
                 for t, w in zip(ALL_TYPES, weights))
  fn = jax.jit(functools.partial(losses.listwise_loss, beta=BETA,
                                 loss_type=list(ALL_TYPES),
                                 loss_weights=weights))
  loss, metrics = fn(policy, ref, scores, mask)
  assert_close(loss, expected)
  assert_close(loss, sum(w * metrics[f"loss/{t}"]
                         for t, w in zip(ALL_TYPES, weights)))


@pytest.mark.parametrize("loss_type", ALL_TYPES)
def test_beta_scales_the_log_ratios(loss_type):
  policy, ref, scores, mask = _inputs(13)
  (a, _), _ = _run(policy, ref, scores, mask, beta=2 * BETA,
                   loss_type=loss_type)
  (b, _), _ = _run(2 * policy, 2 * ref, scores, mask, beta=BETA,
                   loss_type=loss_type)
  assert_close(a, b)
  assert_close(a, _np_listwise(loss_type, policy, ref, scores, mask,
                               2 * BETA))


def test_bf16_inputs_and_no_mask():
  policy, ref, scores, _ = _inputs(14)
  bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)
  # mask=None: every candidate is valid.
  (loss, metrics), grads = _run(bf16(policy), bf16(ref), bf16(scores), None,
                                beta=BETA, loss_type=ALL_TYPES)
  assert loss.dtype == jnp.float32
  assert_finite_tree((loss, metrics, grads))
  assert grads[0].dtype == jnp.bfloat16
  assert_close(metrics["informative_lists"], 1.0)
  p64, r64, s64 = (np.float64(np.asarray(bf16(x), np.float32))
                   for x in (policy, ref, scores))
  expected = sum(_np_listwise(t, p64, r64, s64, np.ones((B, K), bool), BETA)
                 for t in ALL_TYPES)
  assert_close(loss, expected, rtol=1e-4)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_unknown_loss_type_lists_supported():
  policy, ref, scores, mask = _inputs()
  with pytest.raises(ValueError, match="supported: .*plackett_luce.*softmax"):
    losses.listwise_loss(policy, ref, scores, mask, loss_type="listnet")
  with pytest.raises(ValueError, match="Unknown"):
    losses.listwise_loss(policy, ref, scores, loss_type=("softmax", "nope"))
  with pytest.raises(ValueError, match="empty"):
    losses.listwise_loss(policy, ref, scores, loss_type=())


def test_shape_mismatch_names_arguments():
  policy, ref, scores, mask = _inputs()
  with pytest.raises(ValueError, match="scores_bk=\\(5, 5\\)"):
    losses.listwise_loss(policy, ref, scores[:, :5], mask)
  with pytest.raises(ValueError, match="mask_bk"):
    losses.listwise_loss(policy, ref, scores, mask[:4])
  with pytest.raises(ValueError, match="\\[B, K\\]"):
    losses.listwise_loss(policy[0], ref[0], scores[0])


def test_bad_options():
  policy, ref, scores, mask = _inputs()
  with pytest.raises(ValueError, match="loss_weights"):
    losses.listwise_loss(policy, ref, scores, loss_type=ALL_TYPES,
                         loss_weights=(1.0,))
  with pytest.raises(ValueError, match="reference_free"):
    losses.listwise_loss(policy, None, scores)
  with pytest.raises(ValueError, match="target_temperature"):
    losses.listwise_loss(policy, ref, scores, loss_type="softmax",
                         target_temperature=-1.0)
