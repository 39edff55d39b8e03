import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import losses
from losses_golden import assert_close, assert_finite_tree, log_softmax

B, T, V = 3, 8, 5


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(B, T, V)).astype(np.float32) * 2
  targets = rng.integers(0, V, size=(B, T))
  mask = np.array([
      [0, 0, 1, 1, 1, 1, 1, 1],  # prompt of 2 then completion
      [0, 1, 1, 1, 0, 0, 0, 0],  # right padding
      [0, 0, 0, 0, 0, 1, 1, 1],
  ], np.float32)
  return logits, targets, mask


def _np_nll(logits, targets):
  return -np.take_along_axis(log_softmax(logits), targets[..., None], -1)[..., 0]


# --------------------------------------------------------------------------
# sft_loss
# --------------------------------------------------------------------------


def test_sft_token_normalisation():
  logits, targets, mask = _batch()
  nll = _np_nll(logits, targets)
  loss, metrics = losses.sft_loss(logits, targets, mask)
  assert_close(loss, (nll * mask).sum() / mask.sum())
  assert_close(metrics["num_target_tokens"], mask.sum())
  assert_close(metrics["zero_target_batch"], 0.0)
  acc = ((logits.argmax(-1) == targets) * mask).sum() / mask.sum()
  assert_close(metrics["token_accuracy"], acc)


def test_sft_sequence_normalisation_skips_empty_rows():
  logits, targets, mask = _batch()
  mask[2] = 0  # A row without targets must not count as a sequence.
  nll = _np_nll(logits, targets)
  per_row = [(nll[b] * mask[b]).sum() / mask[b].sum() for b in range(2)]
  loss, _ = losses.sft_loss(logits, targets, mask, normalize="sequence")
  assert_close(loss, np.mean(per_row))


@pytest.mark.parametrize("normalize", ["token", "sequence"])
def test_sft_all_zero_mask_is_finite_and_flagged(normalize):
  logits, targets, mask = _batch()
  zeros = np.zeros_like(mask)
  fn = jax.jit(functools.partial(losses.sft_loss, normalize=normalize))
  loss, metrics = fn(logits, targets, zeros)
  assert_close(loss, 0.0)
  assert_close(metrics["zero_target_batch"], 1.0)
  assert_close(metrics["num_target_tokens"], 0.0)
  assert_finite_tree(metrics)
  grad = jax.grad(lambda l: fn(l, targets, zeros)[0])(jnp.asarray(logits))
  assert_close(grad, np.zeros_like(logits))


def test_sft_jits_and_grad_is_finite():
  logits, targets, mask = _batch()
  fn = jax.jit(lambda l: losses.sft_loss(l, targets, mask)[0])
  assert_close(fn(logits), losses.sft_loss(logits, targets, mask)[0])
  assert_finite_tree(jax.grad(fn)(jnp.asarray(logits)))


def test_sft_rejects_unknown_normalize():
  logits, targets, mask = _batch()
  with pytest.raises(ValueError, match="normalize"):
    losses.sft_loss(logits, targets, mask, normalize="batch")


# --------------------------------------------------------------------------
# token_unlikelihood_loss (brute force, one position at a time)
# --------------------------------------------------------------------------


def _np_token_ul(logits, targets, loss_mask, ctx_mask, alpha):
  lp = log_softmax(logits)
  p = np.exp(lp)
  mle = ul = count = 0.0
  for b in range(targets.shape[0]):
    for t in range(targets.shape[1]):
      if not loss_mask[b, t]:
        continue
      count += 1
      mle += -lp[b, t, targets[b, t]]
      cands = {targets[b, j] for j in range(t) if ctx_mask[b, j]}
      cands.discard(targets[b, t])
      for c in cands:
        ul += -np.log(1.0 - min(p[b, t, c], 1.0 - 1e-5))
  return mle / count, ul / count, mle / count + alpha * ul / count


def test_token_unlikelihood_matches_brute_force():
  logits, targets, mask = _batch(1)
  # A near-certain candidate exercises the clip in log(1 − p).
  logits[0, 6, targets[0, 2]] = 40.0
  mle, ul, total = _np_token_ul(logits, targets, mask, mask, alpha=0.5)
  loss, metrics = losses.token_unlikelihood_loss(logits, targets, mask,
                                                 alpha=0.5)
  assert ul > 0
  assert_close(metrics["mle_loss"], mle)
  assert_close(metrics["ul_loss"], ul)
  assert_close(loss, total)


def test_token_unlikelihood_context_mask_adds_prompt_candidates():
  logits, targets, mask = _batch(2)
  ctx = np.ones_like(mask)
  _, _, total = _np_token_ul(logits, targets, mask, ctx, alpha=1.0)
  loss, _ = losses.token_unlikelihood_loss(logits, targets, mask,
                                           context_mask_bt=ctx)
  assert_close(loss, total)


def test_token_unlikelihood_counts_each_candidate_once():
  # Targets 1 1 1 2: at t=3 the only candidate is token 1, counted once.
  logits = np.zeros((1, 4, 3), np.float32)
  targets = np.array([[1, 1, 1, 2]])
  mask = np.ones((1, 4), np.float32)
  _, metrics = losses.token_unlikelihood_loss(logits, targets, mask)
  # Candidates per position: 0, 0 (same as target), 0, 1.
  assert_close(metrics["candidates_per_token"], 0.25)
  assert_close(metrics["ul_loss"], -np.log(1 - 1 / 3) / 4)


def test_token_unlikelihood_jit_grad_and_empty_mask():
  logits, targets, mask = _batch(3)
  fn = jax.jit(lambda l, m: losses.token_unlikelihood_loss(l, targets, m))
  loss, metrics = fn(logits, mask)
  assert_close(loss, losses.token_unlikelihood_loss(logits, targets, mask)[0])
  assert_finite_tree(jax.grad(lambda l: fn(l, mask)[0])(jnp.asarray(logits)))
  loss0, metrics0 = fn(logits, np.zeros_like(mask))
  assert_close(loss0, 0.0)
  assert_finite_tree(metrics0)


# --------------------------------------------------------------------------
# sequence_unlikelihood_loss
# --------------------------------------------------------------------------


def _np_repeat_mask(tokens, mask, n):
  out = np.zeros(tokens.shape, bool)
  for b in range(tokens.shape[0]):
    seen = set()
    for j in range(tokens.shape[1] - n + 1):
      if not mask[b, j:j + n].all():
        continue
      ngram = tuple(tokens[b, j:j + n])
      if ngram in seen:
        out[b, j:j + n] = True
      seen.add(ngram)
  return out


def test_repeated_ngram_mask_matches_loop():
  tokens = np.array([
      [1, 2, 3, 1, 2, 3, 1, 2, 0, 0],
      [4, 4, 4, 4, 4, 5, 4, 4, 4, 9],
      [1, 2, 1, 2, 1, 2, 7, 7, 7, 7],
  ])
  mask = np.ones_like(tokens)
  mask[0, 8:] = 0
  for n in (1, 2, 3, 4):
    expected = _np_repeat_mask(tokens, mask, n)
    got = losses.repeated_ngram_mask(tokens, mask, ngram_size=n)
    np.testing.assert_array_equal(np.asarray(got), expected)
  assert not np.asarray(losses.repeated_ngram_mask(tokens, mask,
                                                   ngram_size=11)).any()


def test_sequence_unlikelihood_golden():
  rng = np.random.default_rng(4)
  tokens = np.array([[1, 2, 3, 1, 2, 3, 4, 0], [2, 2, 2, 2, 2, 1, 0, 0]])
  mask = np.array([[1] * 7 + [0], [1] * 6 + [0, 0]], np.float32)
  logits = rng.normal(size=(2, 8, 5)).astype(np.float32)
  neg = _np_repeat_mask(tokens, mask, 2)
  p = np.exp(np.take_along_axis(log_softmax(logits), tokens[..., None],
                                -1)[..., 0])
  expected = (-np.log(1 - np.minimum(p, 1 - 1e-5)) * neg * mask).sum() / mask.sum()
  fn = jax.jit(functools.partial(losses.sequence_unlikelihood_loss,
                                 ngram_size=2))
  loss, metrics = fn(logits, tokens, mask)
  assert_close(loss, expected)
  assert_close(metrics["repeat_fraction"], (neg * mask).sum() / mask.sum())
  assert_finite_tree(jax.grad(lambda l: fn(l, tokens, mask)[0])(
      jnp.asarray(logits)))


# --------------------------------------------------------------------------
# tfew_loss
# --------------------------------------------------------------------------


def test_tfew_terms_golden():
  rng = np.random.default_rng(5)
  b, c, t = 3, 4, 5
  lp = np.log(rng.uniform(0.05, 0.95, size=(b, c, t)))
  lengths = rng.integers(1, t + 1, size=(b, c))
  mask = (np.arange(t)[None, None] < lengths[..., None]).astype(np.float32)
  correct = np.array([0, 3, 1])

  lm_num = lm_den = ul_num = ul_den = 0.0
  ln = []
  for i in range(b):
    beta = np.array([(lp[i, k] * mask[i, k]).sum() / lengths[i, k]
                     for k in range(c)])
    ln.append(-(beta - np.log(np.exp(beta).sum()))[correct[i]])
    for k in range(c):
      for j in range(lengths[i, k]):
        if k == correct[i]:
          lm_num += -lp[i, k, j]
          lm_den += 1
        else:
          ul_num += -np.log(1 - np.exp(lp[i, k, j]))
          ul_den += 1
  lm, ul, ln = lm_num / lm_den, ul_num / ul_den, np.mean(ln)

  loss, metrics = jax.jit(losses.tfew_loss)(lp.astype(np.float32), mask,
                                            correct)
  assert_close(metrics["lm_loss"], lm)
  assert_close(metrics["unlikelihood_loss"], ul)
  assert_close(metrics["length_norm_loss"], ln)
  assert_close(loss, lm + ul + ln)
  weighted, _ = losses.tfew_loss(lp.astype(np.float32), mask, correct,
                                 unlikelihood_weight=0.5,
                                 length_norm_weight=2.0)
  assert_close(weighted, lm + 0.5 * ul + 2.0 * ln)
  grad = jax.grad(lambda x: losses.tfew_loss(x, mask, correct)[0])(
      jnp.asarray(lp, jnp.float32))
  assert_finite_tree(grad)


def test_tfew_empty_choices_are_finite():
  lp = -np.ones((2, 3, 4), np.float32)
  mask = np.zeros((2, 3, 4), np.float32)
  mask[0, :2, :2] = 1  # Row 0: two choices of 2 tokens, third is padding.
  loss, metrics = losses.tfew_loss(lp, mask, np.array([1, 0]))
  assert_finite_tree((loss, metrics))
  # Row 0: softmax over the two real choices only (equal scores): log 2.
  # Row 1: no tokens anywhere: all choices equally empty: log 3.
  assert_close(metrics["length_norm_loss"], (np.log(2) + np.log(3)) / 2)
