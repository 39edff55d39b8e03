"""grpo.objective (the clipped surrogate and/or listwise losses on implicit
rewards) and the in-graph ranking telemetry of the GRPO and PPO steps:
real steps on a tiny model, `objective_loss` against the losses it sums,
masked rows, the ranking metrics against numpy, and config validation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import config as config_lib
from rankjax import inference, losses, parallel, rewards, testing, train
from rankjax.config import GRPOCfg, OptimCfg, PPOCfg, SampleCfg
from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer
from rankjax.train import _grpo, _ppo, _rl, _rollout

TOK = CharTokenizer()
TASK = tasks.ArithmeticTask(ops=("add",), min_digits=1, max_digits=2, seed=0)
# Odd tokens counted: rewards 0..4 that differ within most groups (and tie
# in some), so the lists are informative from the first step.
ODD = rewards.Reward("odd", lambda x, _: jnp.sum(x.completion_tokens % 2, -1) * 1.0)
RANKING_KEYS = ("ranking/kendall_tau", "ranking/ndcg", "ranking/top_rank",
                "ranking/top_rank_fraction", "ranking/top_reward", "ranking/informative")


# -- helpers (as tests/rl/test_grpo_ppo.py, a smaller model) --------------------


def _model(seed=0):
  return testing.tiny_model("llama", seed=seed, vocab_size=TOK.vocab_size, hidden_size=32,
                            num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                            intermediate_size=64)


def _state(model, lr=1e-3, *, with_reference=False):
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  tx = train.make_optimizer(OptimCfg(learning_rate=lr, warmup_steps=0, schedule="constant"), 1000)
  state, sh = train.create_train_state(model, tx, mesh, with_reference=with_reference)
  return state, sh, train.batch_sharding(mesh)


def _batch(b=4):
  return next(_rl.PromptBatches(tasks.generate(TASK, "train", 64), TOK, b, 8, seed=0))


def _rollout_settings():
  return train.RolloutSettings(SampleCfg(max_new_tokens=4), (TOK.eos_id,))


def _hp(**kw):
  return GRPOCfg(**dict(dict(group_size=4, num_minibatches=2), **kw))


def _jit(state_sh, batch_sh, hp):
  return _rl.jit_rl_step(_grpo.grpo_step, state_sh, batch_sh, [None], rewards=(ODD,), hp=hp,
                         rollout=_rollout_settings())


def _step_rollout(state, batch, group_size):
  """The rollout a step samples: its key is the first half of the state's
  split key (computed before the step, which donates the state)."""
  key = jax.random.split(jax.random.wrap_key_data(state.rng))[0]
  fn = jax.jit(lambda st, b, k: train.rollout(st.model(), b, (ODD,), [None], k,
                                              settings=_rollout_settings(),
                                              group_size=group_size))
  return jax.tree.map(np.asarray, fn(state, batch, key))


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b)))


def _ranking_reference(loglik_bg, reward_bg, valid_bg):
  """The ranking telemetry in numpy, from its definition: per group over the
  valid samples, Kendall τ_b and NDCG (`inference.kendall_tau` / `ndcg`,
  relevance r − min r) of the log-likelihood ranking against the rewards,
  and the reward rank / reward of the most likely sample(s); means over the
  groups where each is defined, 0 where none is."""
  per = {k: [] for k in RANKING_KEYS}
  for s, r, v in zip(loglik_bg, reward_bg, valid_bg):
    s, r = np.asarray(s, np.float64)[v], np.asarray(r, np.float64)[v]
    n = s.size
    if n == 0:
      per["ranking/informative"].append(0.0)
      continue
    tau = inference.kendall_tau(s, r)
    per["ranking/informative"].append(float(np.isfinite(tau)))
    per["ranking/kendall_tau"].append(tau)
    per["ranking/ndcg"].append(inference.ndcg(s, r - r.min()))
    top = s == s.max()
    rank = np.mean([1 + np.sum(r > r_top) for r_top in r[top]])
    per["ranking/top_rank"].append(rank)
    per["ranking/top_reward"].append(r[top].mean())
    if n >= 2 and np.ptp(r) > 0:
      per["ranking/top_rank_fraction"].append((rank - 1) / (n - 1))
  out = {}
  for k, values in per.items():
    values = [x for x in values if np.isfinite(x)]
    out[k] = float(np.mean(values)) if values else 0.0
  out["ranking/informative"] = float(np.mean(per["ranking/informative"]))
  return out


def _rollout_reference(ro, group_size):
  lengths = np.maximum(ro.completion_mask.sum(-1), 1)
  loglik = np.where(ro.completion_mask, ro.logprobs, 0.0).astype(np.float64).sum(-1) / lengths
  g = group_size if group_size > 1 else loglik.shape[0]
  return _ranking_reference(loglik.reshape(-1, g), ro.total.reshape(-1, g),
                            ro.valid.reshape(-1, g))


def _assert_ranking(metrics, want):
  for k in RANKING_KEYS:
    np.testing.assert_allclose(float(metrics[k]), want[k], atol=1e-5, err_msg=k)


# -- real steps ---------------------------------------------------------------


def test_listwise_step_runs_on_the_reference_and_logs_ranking():
  """objective=("plackett_luce",): the step needs and runs the reference,
  logs the listwise metrics and no clipped-surrogate ones, moves the policy,
  and its ranking telemetry is the numpy one of the rollout it sampled."""
  hp = _hp(objective=("plackett_luce",))
  assert _grpo.needs_reference(hp)
  assert not _grpo.needs_reference(GRPOCfg()) and _grpo.needs_reference(GRPOCfg(beta=0.04))
  state, sh, bsh = _state(_model(), with_reference=True)
  batch = _batch()
  ro = _step_rollout(state, batch, hp.group_size)
  before = _copy(state.params)
  state, m = _jit(sh, bsh, hp)(state, batch, [None])
  m = {k: float(v) for k, v in m.items()}

  for key in ("listwise/loss/plackett_luce", "listwise/rewards/accuracies",
              "listwise/rewards/mean", "listwise/informative_lists", *RANKING_KEYS):
    assert key in m, key
  assert not [k for k in m if k.startswith("clip_ratio/")], sorted(m)
  assert "loss/clipped" not in m and "kl" not in m and "listwise/loss" not in m
  assert all(np.isfinite(v) for v in m.values()) and m["nonfinite"] == 0
  # One objective, weight 1: the loss is the listwise term.
  assert m["loss"] == pytest.approx(m["listwise/loss/plackett_luce"], rel=1e-6)
  assert m["listwise/loss/plackett_luce"] > 0 and m["listwise/informative_lists"] > 0
  assert 0.0 <= m["listwise/rewards/accuracies"] <= 1.0
  assert _max_diff(state.params, before) > 1e-5

  # The telemetry, from the same rollout (its reward and lengths agree).
  assert m["reward"] == pytest.approx(float(ro.total[ro.valid].mean()), abs=1e-6)
  assert m["completion_length"] == pytest.approx(float(ro.completion_mask.sum(-1).mean()))
  want = _rollout_reference(ro, hp.group_size)
  assert want["ranking/informative"] > 0   # the comparison is not vacuous
  _assert_ranking(m, want)


def test_zero_weighted_listwise_term_leaves_the_update_unchanged():
  """Same state, rng and batch: ("clipped", "plackett_luce") with weights
  (1.0, 0.0) updates the parameters exactly as ("clipped",) alone, while
  the zero-weighted term is live (its loss is logged and non-zero): the
  mixture adds only the weighted term."""
  batch = _batch()
  initial = _copy(_state(_model())[0].params)
  runs = {}
  for objective, weights in [(("clipped",), ()), (("clipped", "plackett_luce"), (1.0, 0.0))]:
    hp = _hp(objective=objective, objective_weights=weights)
    state, sh, bsh = _state(_model(), with_reference=_grpo.needs_reference(hp))
    state, m = _jit(sh, bsh, hp)(state, batch, [None])
    runs[objective] = (_copy(state.params), {k: float(v) for k, v in m.items()})
  (base_params, base), (params, mixed) = runs[("clipped",)], runs[("clipped", "plackett_luce")]
  assert _max_diff(base_params, initial) > 1e-5   # the update is not empty
  assert _max_diff(params, base_params) < 1e-6
  for k in ("loss", "loss/clipped", "clip_ratio/region_mean", "reward", *RANKING_KEYS):
    assert mixed[k] == pytest.approx(base[k], abs=1e-6), k
  assert not [k for k in base if k.startswith("listwise/")]
  assert mixed["listwise/loss/plackett_luce"] > 0.1
  assert mixed["loss"] == pytest.approx(mixed["loss/clipped"], abs=1e-6)


def test_ppo_step_logs_ranking_over_the_batch():
  """PPO samples one completion per prompt: its batch is one ranked list
  (`test_ranking_metrics_match_numpy[6-1]` checks the values)."""
  state, _, _ = _state(_rl._with_value_head(_model(), seed=3), with_reference=True)
  hp = PPOCfg(num_prompts=8, num_epochs=1, num_minibatches=1)
  step = jax.jit(functools.partial(_ppo.ppo_step, hp=hp, rollout=_rollout_settings(),
                                   rewards=(ODD,)), donate_argnums=0)
  _, _, m = step(state, None, _batch(b=8), [None], jnp.float32(0.01))
  m = {k: float(v) for k, v in m.items()}
  assert set(RANKING_KEYS) <= set(m) and all(np.isfinite(m[k]) for k in RANKING_KEYS)
  # One list of 8 with unequal rewards: informative, so τ and the rank are set.
  assert m["ranking/informative"] == 1.0
  assert -1.0 <= m["ranking/kendall_tau"] <= 1.0 and 0.0 < m["ranking/ndcg"] <= 1.0
  assert 1.0 <= m["ranking/top_rank"] <= 8.0
  assert m["ranking/top_rank_fraction"] == pytest.approx((m["ranking/top_rank"] - 1) / 7)


# -- ranking_metrics on a hand-made rollout ----------------------------------------


def _hand_rollout(b, g, seed=0, c=5):
  rng = np.random.default_rng(seed)
  r = b * g
  lengths = rng.integers(0, c + 1, r)
  mask = np.arange(c)[None] < lengths[:, None]
  logprobs = np.where(mask, -rng.uniform(0.05, 3.0, (r, c)), 7.0).astype(np.float32)
  total = rng.integers(0, 3, r).astype(np.float32)
  valid = np.ones(r, bool)
  if g > 1:
    valid[1] = False               # group 0: one row no reward applies to
    total[1] = np.nan
    total[g:2 * g] = 1.0           # group 1: all tied, not informative
    logprobs[2 * g + 1] = logprobs[2 * g]  # group 2: a likelihood tie
    mask[2 * g + 1] = mask[2 * g]
  else:
    valid[2], total[2] = False, np.nan
  return _rollout.Rollout(
      prompt=np.zeros((b, 3), np.int32), prompt_mask=np.ones((b, 3), bool),
      completion=np.ones((r, c), np.int32), completion_mask=mask, model_mask=mask,
      logprobs=logprobs, finished=np.ones(r, bool), rewards=total[:, None], total=total,
      valid=valid, turns=np.zeros(r, np.int32), env_errors=np.zeros(r, np.int32),
      turn_rewards=np.zeros((r, c), np.float32))


@pytest.mark.parametrize("b,g", [(4, 4), (6, 1)])
def test_ranking_metrics_match_numpy(b, g):
  ro = _hand_rollout(b, g)
  got = jax.jit(_rollout.ranking_metrics)(ro)
  assert set(got) == set(RANKING_KEYS)
  want = _rollout_reference(ro, g)
  if g > 1:
    assert 0 < want["ranking/informative"] < 1   # the tied group counts as uninformative
  _assert_ranking(got, want)
  # Length normalisation matters: ranking by sequence sums differs here.
  sums = np.where(ro.completion_mask, ro.logprobs, 0.0).sum(-1)
  by_sum = _ranking_reference(sums.reshape(-1, g if g > 1 else b),
                              ro.total.reshape(-1, g if g > 1 else b),
                              ro.valid.reshape(-1, g if g > 1 else b))
  assert any(abs(by_sum[k] - want[k]) > 1e-3 for k in RANKING_KEYS)


# -- objective_loss ---------------------------------------------------------------


def _mb(b=2, g=3, n=5, seed=0):
  """Hand-made minibatch arrays; row 1 is masked out of every loss."""
  rng = np.random.default_rng(seed)
  r = b * g
  cmask = np.arange(n)[None] < rng.integers(1, n + 1, r)[:, None]
  logp = -rng.uniform(0.1, 3.0, (r, n)).astype(np.float32)
  list_mask = np.ones(r, bool)
  list_mask[1] = False
  mb = dict(completion_mask=cmask, model_mask=cmask, loss_mask=cmask & list_mask[:, None],
            old=(logp + rng.normal(0, 0.1, (r, n))).astype(np.float32),
            ref=(logp + rng.normal(0, 0.3, (r, n))).astype(np.float32),
            adv=rng.normal(size=r).astype(np.float32),
            reward=rng.permutation(np.arange(r) % 3).astype(np.float32), list_mask=list_mask)
  return jnp.asarray(logp), {k: jnp.asarray(v) for k, v in mb.items()}


def _objective(hp, mb, n):
  active = jnp.sum(mb["loss_mask"])
  return lambda logp: _grpo.objective_loss(logp, mb, hp=hp, max_new_tokens=n, active=active)


def test_objective_loss_is_the_weighted_sum_of_its_terms():
  n, g = 5, 3
  logp, mb = _mb(n=n, g=g)
  hp = GRPOCfg(group_size=g, beta=0.04, aggregation="dapo",
               objective=("clipped", "plackett_luce", "softmax"),
               objective_weights=(0.5, 2.0, 0.3), listwise_beta=0.2,
               listwise_target_temperature=0.5)

  def direct(logp):
    clipped, _ = losses.grpo_loss(
        logp, mb["old"], mb["adv"], mb["loss_mask"], eps_low=hp.eps_low, eps_high=hp.eps_high,
        ratio_level=hp.ratio_level, aggregation=hp.aggregation, max_completion_length=n,
        num_active_tokens_global=jnp.sum(mb["loss_mask"]), ref_logp_bt=mb["ref"], beta=0.04)
    seq = lambda x: losses.sequence_logprobs(x, mb["completion_mask"]).reshape(-1, g)
    args = (seq(logp), seq(mb["ref"]), mb["reward"].reshape(-1, g),
            mb["list_mask"].reshape(-1, g))
    pl, _ = losses.listwise_loss(*args, beta=0.2, loss_type="plackett_luce")
    sm, _ = losses.listwise_loss(*args, beta=0.2, loss_type="softmax", target_temperature=0.5)
    return 0.5 * clipped + 2.0 * pl + 0.3 * sm, (clipped, pl, sm)

  grad = lambda f: jax.jit(jax.value_and_grad(f, has_aux=True))(logp)
  (loss, metrics), grad_ = grad(_objective(hp, mb, n))
  (want, (clipped, pl, sm)), want_grad = grad(direct)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(grad_, want_grad, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["loss/clipped"], clipped, rtol=1e-6)
  np.testing.assert_allclose(metrics["listwise/loss/plackett_luce"], pl, rtol=1e-6)
  np.testing.assert_allclose(metrics["listwise/loss/softmax"], sm, rtol=1e-6)
  for key in ("clip_ratio/region_mean", "kl", "listwise/rewards/accuracies",
              "listwise/informative_lists"):
    assert key in metrics, key
  assert "listwise/loss" not in metrics
  assert float(pl) > 0 and float(sm) > 0 and float(jnp.abs(clipped)) > 0


def test_two_candidates_plackett_luce_is_dpo_by_hand():
  """G = 2, listwise only: per prompt −log σ(β[(s_w − s_w^ref) − (s_l − s_l^ref)])
  on sequence sums over the completion mask, averaged over prompts; the
  rows of prompt p are 2p and 2p + 1."""
  logp, mb = _mb(b=3, g=2, n=4, seed=1)
  mb = dict(mb, list_mask=jnp.ones(6, bool),
            reward=jnp.asarray([1.0, 0.0, 0.0, 2.0, 5.0, -1.0]))
  hp = GRPOCfg(group_size=2, objective=("plackett_luce",), listwise_beta=0.3)
  loss, _ = jax.jit(_objective(hp, mb, 4))(logp)
  cm = np.asarray(mb["completion_mask"])
  s = np.where(cm, np.asarray(logp, np.float64), 0).sum(-1)
  s_ref = np.where(cm, np.asarray(mb["ref"], np.float64), 0).sum(-1)
  z = 0.3 * (s - s_ref)
  margins = [z[0] - z[1], z[3] - z[2], z[4] - z[5]]   # winner − loser
  want = np.mean([np.log1p(np.exp(-m)) for m in margins])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_clipped_alone_is_the_plain_grpo_loss():
  """objective=("clipped",) with default weights is what the step minimised
  before objectives existed: `grpo_loss` itself, value, gradient and
  metrics, bit for bit."""
  logp, mb = _mb()
  active = jnp.sum(mb["loss_mask"])
  hp = GRPOCfg(group_size=3, beta=0.04, eps_high=0.28, aggregation="dapo")
  assert hp.objective == ("clipped",) and hp.objective_weights == ()
  plain = lambda lp: losses.grpo_loss(
      lp, mb["old"], mb["adv"], mb["loss_mask"], eps_low=0.2, eps_high=0.28,
      ratio_level="token", aggregation="dapo", max_completion_length=5,
      num_active_tokens_global=active, ref_logp_bt=mb["ref"], beta=0.04)
  grad = lambda f: jax.jit(jax.value_and_grad(f, has_aux=True))(logp)
  (want, want_m), want_g = grad(plain)
  for weights in ((), (1.0,)):
    (loss, m), g = grad(_objective(dataclasses.replace(hp, objective_weights=weights), mb, 5))
    np.testing.assert_array_equal(loss, want)
    np.testing.assert_array_equal(g, want_g)
    assert set(m) == set(want_m) | {"loss/clipped"}
    for k, v in want_m.items():
      np.testing.assert_array_equal(m[k], v, err_msg=k)


def test_default_weights_are_one_each():
  logp, mb = _mb()
  fn = lambda w: jax.jit(jax.value_and_grad(_objective(
      GRPOCfg(group_size=3, objective=("clipped", "lipo_lambda"), objective_weights=w),
      mb, 5), has_aux=True))(logp)
  (l0, _), g0 = fn(())
  (l1, _), g1 = fn((1.0, 1.0))
  np.testing.assert_array_equal(l0, l1)
  np.testing.assert_array_equal(g0, g1)


@pytest.mark.parametrize("objective", [("plackett_luce",), ("lipo_lambda",), ("softmax",),
                                       ("clipped", "plackett_luce", "lipo_lambda")])
def test_masked_row_gets_no_gradient(objective):
  """Row 1 is outside list_mask (and loss_mask): its log-probs, reward and
  reference do not move the loss, and its gradient is exactly 0."""
  logp, mb = _mb()
  hp = GRPOCfg(group_size=3, beta=0.04, objective=objective)
  fn = lambda lp, mb: _objective(hp, mb, 5)(lp)[0]
  value_and_grad = jax.jit(jax.value_and_grad(fn))
  loss, grad = value_and_grad(logp, mb)
  assert float(jnp.abs(loss)) > 0 and np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[1] == 0.0)
  assert np.any(np.asarray(grad)[[0, 2]] != 0.0)   # its group's other rows do learn
  perturbed = logp.at[1].add(5.0)
  np.testing.assert_array_equal(value_and_grad(perturbed, mb)[0], loss)
  # Garbage in its reward and reference. NaN is allowed in the listwise
  # terms; the clipped term's k3 KL needs a finite reference (a NaN or
  # overflowing exp(ref − logp) there would give 0 · NaN gradients).
  ref = np.nan if "clipped" not in objective else mb["ref"][1] + 3.0
  garbage = dict(mb, reward=mb["reward"].at[1].set(np.nan), ref=mb["ref"].at[1].set(ref))
  loss2, grad2 = value_and_grad(perturbed, garbage)
  np.testing.assert_array_equal(loss2, loss)
  np.testing.assert_array_equal(grad2, grad)


# -- config validation ---------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    (dict(objective=("clipped", "ppo")), r"'grpo\.objective'.*unknown \['ppo'\]"),
    (dict(objective=()), r"'grpo\.objective'.*empty"),
    (dict(objective=("plackett_luce", "plackett_luce")), r"'grpo\.objective'.*twice"),
    (dict(objective="plackett_luce"), r"'grpo\.objective'"),
    (dict(objective=("clipped", "softmax"), objective_weights=(1.0,)),
     r"'grpo\.objective_weights'.*one weight per objective"),
    (dict(objective_weights=(1.0, 0.5)), r"'grpo\.objective_weights'"),
    (dict(listwise_beta=0.0), r"'grpo\.listwise_beta'"),
    (dict(listwise_target_temperature=-1.0), r"'grpo\.listwise_target_temperature'"),
])
def test_objective_config_errors(kw, match):
  cfg = config_lib.Config(pipeline=("grpo",), grpo=GRPOCfg(**dict(dict(num_prompts=8), **kw)))
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(cfg)


def test_every_listwise_objective_validates():
  names = ("clipped", *losses.LISTWISE_LOSS_TYPES)
  cfg = config_lib.Config(pipeline=("grpo",), grpo=GRPOCfg(
      num_prompts=8, objective=names, objective_weights=tuple(0.5 for _ in names)))
  assert config_lib.validate(cfg) is cfg
  for name in losses.LISTWISE_LOSS_TYPES:
    config_lib.validate(config_lib.Config(pipeline=("grpo",),
                                          grpo=GRPOCfg(num_prompts=8, objective=(name,))))
