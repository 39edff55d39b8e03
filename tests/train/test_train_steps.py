"""Train steps on tiny models: they learn, they agree with their pieces, and
they refuse or survive bad input."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import train
from rankjax.config import DPOCfg, KTOCfg
from train_helpers import host, kto_batch, lm_batch, make_state, pref_batch, tiny_model


def _run(step_fn, setup, batch, n, **hp):
  """n jitted steps on one batch; (state, per-step host metrics)."""
  state, sh, bsh = setup
  step = train.jit_step(step_fn, sh, bsh, **hp)
  history = []
  for _ in range(n):
    state, metrics = step(state, train.put_batch(batch, bsh))
    history.append(host(metrics))
  return state, history


def _eval(objective, state, batch, bsh, **hp):
  ev = jax.jit(functools.partial(train.eval_step, objective=objective, **hp))
  return host(ev(state, train.put_batch(batch, bsh)))


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(host(tree)))


def test_sft_lowers_loss():
  state, hist = _run(train.sft_step, make_state(tiny_model()), lm_batch(), 25)
  first, last = hist[0]["loss"], hist[-1]["loss"]
  assert last < 0.5 * first, (first, last)
  assert all(np.isfinite(h["grad_norm"]) and h["nonfinite"] == 0 for h in hist)
  assert _all_finite(state.params)


def test_rm_separable_accuracy():
  rm = train.reward_model_from(tiny_model(), seed=0)
  setup = make_state(rm, lr=3e-3)
  state, hist = _run(train.rm_step, setup, pref_batch(), 30)
  assert hist[-1]["loss"] < hist[0]["loss"]
  metrics = _eval(train.rm_objective, state, pref_batch(seed=1), setup[2])
  assert metrics["accuracy"] > 0.9, metrics


def test_dpo_separable_accuracy():
  setup = make_state(tiny_model(), with_reference=True, lr=3e-3)
  state, hist = _run(train.dpo_step, setup, pref_batch(), 30, hp=DPOCfg(beta=0.5))
  assert hist[-1]["loss"] < hist[0]["loss"]
  assert abs(hist[0]["loss"] - np.log(2)) < 1e-5  # policy == reference at step 0
  metrics = _eval(train.dpo_objective, state, pref_batch(seed=1), setup[2], hp=DPOCfg(beta=0.5))
  assert metrics["rewards/accuracies"] > 0.9, metrics


def test_kto_lowers_loss():
  setup = make_state(tiny_model(), with_reference=True, lr=3e-3)
  state, hist = _run(train.kto_step, setup, kto_batch(), 20, hp=KTOCfg(beta=0.5))
  assert hist[-1]["loss"] < hist[0]["loss"] - 0.05, (hist[0]["loss"], hist[-1]["loss"])
  assert hist[-1]["rewards/chosen"] > hist[-1]["rewards/rejected"]
  assert _all_finite(state.params)


def test_grad_accumulation_matches_full_batch():
  # Equal target counts per micro-batch: the mean of micro-batch means is the
  # full-batch mean, so the accumulated gradient equals the full one.
  batch = lm_batch(b=8)
  batch["loss_mask"][:] = 0
  batch["loss_mask"][:, 2:6] = 1
  state, sh, bsh = make_state(tiny_model())
  grads = {}
  for accum in (1, 2):
    fn = jax.jit(lambda s, b: train.compute_grads(s, b, train.sft_loss_fn, accum))
    grads[accum] = host(fn(state, train.put_batch(batch, bsh)))
  loss1, _, g1 = grads[1]
  loss2, _, g2 = grads[2]
  np.testing.assert_allclose(loss1, loss2, rtol=1e-6)
  chex.assert_trees_all_close(g1, g2, rtol=1e-5, atol=1e-7)
  # And the jitted step runs with accumulation.
  step = train.jit_step(train.sft_step, sh, bsh, accum_steps=2)
  state, metrics = step(state, train.put_batch(batch, bsh))
  np.testing.assert_allclose(host(metrics)["loss"], loss1, rtol=1e-6)


def test_cached_reference_logps_are_used():
  """ref_* keys in the batch replace the in-step reference forward."""
  batch = pref_batch()
  state, sh, bsh = make_state(tiny_model(), with_reference=True)
  ref = jax.jit(lambda s, b: train.sequence_logps(s.ref_model(), train.concat_pair(b))[0])(
      state, train.put_batch(batch, bsh))
  ref_c, ref_r = np.split(host(ref), 2)
  step = train.jit_step(train.dpo_step, sh, bsh, hp=DPOCfg(beta=0.1))
  in_step, m1 = step(state, train.put_batch(batch, bsh))
  # A state without a reference copy, fed the cached values.
  state2, sh2, _ = make_state(tiny_model(), with_reference=False)
  cached = dict(batch, ref_chosen_logps=ref_c + 0.5, ref_rejected_logps=ref_r)
  step2 = train.jit_step(train.dpo_step, sh2, bsh, hp=DPOCfg(beta=0.1))
  _, m2 = step2(state2, train.put_batch(cached, bsh))
  m1, m2 = host(m1), host(m2)
  # Shifting the cached chosen reference by 0.5 shifts the margin by -beta/2.
  np.testing.assert_allclose(m2["rewards/margins"], m1["rewards/margins"] - 0.05, atol=1e-5)
  with pytest.raises(ValueError, match="no reference"):
    step2(state2, train.put_batch(batch, bsh))


def test_mismatched_pairs():
  batch = {"tokens": np.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]], np.int32),
           "loss_mask": np.array([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]], np.int32)}
  out = host(train.mismatched_pairs(batch))
  # row 0: prompt [1 5] + completion of row 1 [9 2]; row 1: [1 8] + [6 7 2]
  np.testing.assert_array_equal(out["tokens"], [[1, 5, 9, 2, 0, 0], [1, 8, 6, 7, 2, 0]])
  np.testing.assert_array_equal(out["loss_mask"], [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]])
  np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])


@pytest.mark.parametrize("bad, match", [
    (lambda b: dict(b, loss_mask=b["loss_mask"][:, :-1]), r"\[B, T\]"),
    (lambda b: {k: v for k, v in b.items() if k != "loss_mask"}, "missing"),
    (lambda b: dict(b, tokens=b["tokens"][:-1]), r"\[B, T\]"),
])
def test_mismatched_batch_shapes_raise(bad, match):
  state, sh, bsh = make_state(tiny_model())
  with pytest.raises(ValueError, match=match):
    train.sft_step(state, bad(lm_batch()))


def test_preference_shape_mismatch_raises():
  state, sh, bsh = make_state(tiny_model(), with_reference=True)
  batch = pref_batch()
  batch["rejected_tokens"] = np.pad(batch["rejected_tokens"], ((0, 0), (0, 2)))
  with pytest.raises(ValueError, match="one shape"):
    train.dpo_step(state, batch)
  with pytest.raises(ValueError, match="per-example"):
    train.kto_step(state, dict(kto_batch(), label=np.zeros(3, np.int32)))
  with pytest.raises(ValueError, match="grad_accum"):
    train.sft_step(state, lm_batch(b=6), accum_steps=4)


def test_zero_target_mask_is_finite_and_flagged():
  state, sh, bsh = make_state(tiny_model())
  batch = lm_batch()
  batch["loss_mask"][:] = 0
  step = train.jit_step(train.sft_step, sh, bsh)
  before = host(state.params)
  state, metrics = step(state, train.put_batch(batch, bsh))
  metrics = host(metrics)
  assert np.isfinite(metrics["loss"]) and metrics["loss"] == 0
  assert metrics["zero_target_batch"] == 1 and metrics["nonfinite"] == 0
  chex.assert_trees_all_close(host(state.params), before)  # zero gradient, no decay


def _assert_skipped(state, before, metrics):
  metrics = host(metrics)
  assert metrics["nonfinite"] == 1
  assert int(state.step) == int(before.step) + 1
  chex.assert_trees_all_equal(host(state.params), host(before.params))
  chex.assert_trees_all_equal(host(state.opt_state), host(before.opt_state))
  assert _all_finite(state.params) and _all_finite(state.opt_state)


def test_nan_batch_skips_update():
  # A token id outside the vocabulary gathers NaN embeddings (jnp.take
  # fills out-of-range rows with NaN): a real batch that produces NaN.
  state, sh, bsh = make_state(tiny_model())
  step = train.jit_step(train.sft_step, sh, bsh)
  state, _ = step(state, train.put_batch(lm_batch(seed=1), bsh))   # non-trivial opt_state
  before = host(state)
  batch = lm_batch()
  batch["tokens"][0, 1] = 10_000
  state, metrics = step(state, train.put_batch(batch, bsh))
  assert not np.isfinite(host(metrics)["loss"])
  _assert_skipped(state, before, metrics)
  state, metrics = step(state, train.put_batch(lm_batch(), bsh))  # and it goes on
  assert host(metrics)["nonfinite"] == 0 and int(state.step) == 3


def test_injected_inf_loss_skips_update():
  state, sh, bsh = make_state(tiny_model())
  before = host(state)

  def inf_loss(model, batch):
    loss, metrics = train.sft_loss_fn(model, batch)
    return loss * jnp.inf, metrics

  state, metrics = jax.jit(lambda s, b: train.update(s, b, inf_loss))(
      state, train.put_batch(lm_batch(), bsh))
  _assert_skipped(state, before, metrics)


def test_fused_token_logps_and_sft_loss_match_losses():
  from rankjax import losses
  from rankjax.train import _steps
  rng = np.random.RandomState(0)
  logits = jnp.asarray(5 * rng.randn(3, 7, 32), jnp.float32)
  targets = jnp.asarray(rng.randint(0, 32, (3, 7)))
  # One fused implementation; _steps re-exports it for the RL steps.
  np.testing.assert_allclose(losses.token_logprobs(logits, targets),
                             _np_token_logps(logits, targets), atol=1e-5)
  model, batch = tiny_model(), lm_batch()
  loss, metrics = train.sft_loss_fn(model, batch)
  ref_loss, ref_metrics = losses.sft_loss(model(batch["tokens"])[:, :-1], batch["tokens"][:, 1:],
                                          batch["loss_mask"][:, 1:])
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["token_accuracy"], ref_metrics["token_accuracy"])


def _np_token_logps(logits, targets):
  """log_softmax(logits)[target] in float64, the unfused way."""
  x = np.asarray(logits, np.float64)
  x = x - x.max(-1, keepdims=True)
  logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
  return np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]


def test_sft_step_loss_matches_numpy_cross_entropy():
  """The jitted SFT step's loss (now `losses.sft_loss`) equals a float64
  numpy cross entropy on the same model's logits. Before the step called
  `losses.sft_loss` it computed 3.427304267883301 on this batch (float32,
  CPU); the same number comes out now."""
  state, sh, bsh = make_state(tiny_model())
  batch = lm_batch()
  logits = host(state.model()(batch["tokens"]))[:, :-1]
  targets, mask = batch["tokens"][:, 1:], batch["loss_mask"][:, 1:]
  expected = -(_np_token_logps(logits, targets) * mask).sum() / mask.sum()
  step = train.jit_step(train.sft_step, sh, bsh)
  _, metrics = step(state, train.put_batch(batch, bsh))
  np.testing.assert_allclose(host(metrics)["loss"], expected, rtol=0, atol=1e-6)


def test_bf16_compute_keeps_float32_master_weights():
  model = tiny_model(dtype="bfloat16", param_dtype="float32")
  state, hist = _run(train.sft_step, make_state(model), lm_batch(), 15)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
  assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype("float32")}
  assert hist[-1]["loss"] < 0.7 * hist[0]["loss"]
