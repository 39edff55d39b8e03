import functools

import jax
import numpy as np
import pytest

from rankjax import losses
from losses_golden import assert_close, assert_finite_tree

# --------------------------------------------------------------------------
# Advantage estimators
# --------------------------------------------------------------------------

G = 4
REWARDS = np.array([1.0, 0.0, 0.0, 1.0,   # prompt 0
                    0.5, 0.5, 0.5, 0.5,   # prompt 1: zero std
                    2.0, -1.0, 0.0, 3.0], np.float32)


def test_group_advantages_group_scale_uses_unbiased_std():
  r = REWARDS.astype(np.float64).reshape(-1, G)
  expected = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True)
                                               + 1e-4)
  got = jax.jit(functools.partial(losses.group_advantages, group_size=G))(
      REWARDS)
  assert got.shape == REWARDS.shape
  assert_close(got, expected.reshape(-1))
  assert_close(got[4:8], np.zeros(4))  # Identical rewards: no signal.


def test_group_advantages_batch_scale():
  r = REWARDS.astype(np.float64)
  centred = (r.reshape(-1, G) - r.reshape(-1, G).mean(1, keepdims=True))
  expected = centred.reshape(-1) / (r.std(ddof=1) + 1e-4)
  assert_close(losses.group_advantages(REWARDS, G, scale="batch"), expected)


def test_group_advantages_no_scale_and_eps():
  r = REWARDS.astype(np.float64).reshape(-1, G)
  expected = (r - r.mean(1, keepdims=True)).reshape(-1)
  assert_close(losses.group_advantages(REWARDS, G, scale="none"), expected)
  std = r.std(1, ddof=1, keepdims=True)
  expected = ((r - r.mean(1, keepdims=True)) / (std + 0.5)).reshape(-1)
  assert_close(losses.group_advantages(REWARDS, G, eps=0.5), expected)


def test_group_advantages_errors_and_group_of_one():
  with pytest.raises(ValueError, match="scale"):
    losses.group_advantages(REWARDS, G, scale="global")
  with pytest.raises(ValueError, match="divide"):
    losses.group_advantages(REWARDS, 5)
  assert_close(losses.group_advantages(REWARDS, 1), np.zeros(12))


def test_rloo_advantages():
  r = REWARDS.astype(np.float64).reshape(-1, G)
  expected = np.array([[r[p, i] - np.delete(r[p], i).mean() for i in range(G)]
                       for p in range(3)]).reshape(-1)
  assert_close(losses.rloo_advantages(REWARDS, G), expected)
  with pytest.raises(ValueError, match="group_size >= 2"):
    losses.rloo_advantages(REWARDS, 1)


def test_reinforce_pp_advantages():
  r = REWARDS.astype(np.float64)
  expected = (r - r.mean()) / (r.std() + 1e-8)
  assert_close(losses.reinforce_pp_advantages(REWARDS), expected)
  a = (r.reshape(-1, G) - r.reshape(-1, G).mean(1, keepdims=True)).reshape(-1)
  expected = (a - a.mean()) / (a.std() + 1e-8)
  assert_close(losses.reinforce_pp_advantages(REWARDS, G), expected)


def test_kl_estimators():
  rng = np.random.default_rng(0)
  lp, ref = rng.normal(-2.0, 1.0, size=(2, 3, 5)).astype(np.float32)
  d = ref.astype(np.float64) - lp
  assert_close(losses.kl_k3(lp, ref), np.exp(d) - d - 1)
  assert_close(losses.kl_k1(lp, ref), -d)
  assert_close(losses.kl_k2(lp, ref), 0.5 * d ** 2)
  assert np.all(np.asarray(losses.kl_k3(lp, ref)) >= 0)
  assert_close(losses.kl_k3(lp, lp), np.zeros((3, 5)))


# --------------------------------------------------------------------------
# grpo_loss
# --------------------------------------------------------------------------

B, T = 4, 6


def _pg_inputs(seed=0):
  rng = np.random.default_rng(seed)
  old = rng.normal(-2.0, 0.5, size=(B, T)).astype(np.float32)
  # Ratios spread over [0.5, 1.6] so both clip sides are hit.
  logp = (old + rng.uniform(np.log(0.5), np.log(1.6), size=(B, T))).astype(
      np.float32)
  ref = (old + rng.normal(0, 0.3, size=(B, T))).astype(np.float32)
  adv = np.array([1.0, -0.5, 2.0, -1.5], np.float32)
  mask = np.array([[1, 1, 1, 1, 1, 1],
                   [1, 1, 1, 0, 0, 0],
                   [1, 1, 1, 1, 1, 0],
                   [1, 0, 0, 0, 0, 0]], np.float32)
  return logp, old, ref, adv, mask


def _np_token_losses(logp, old, ref, adv, mask, eps_low, eps_high, beta,
                     sequence=False):
  logp, old, ref = (np.asarray(x, np.float64) for x in (logp, old, ref))
  per = np.zeros((B, T))
  ratios = np.zeros((B, T))
  for i in range(B):
    n = mask[i].sum()
    seq_log_ratio = ((logp[i] - old[i]) * mask[i]).sum() / n
    for t in range(T):
      lr = seq_log_ratio if sequence else logp[i, t] - old[i, t]
      rho = np.exp(lr)
      clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
      d = ref[i, t] - logp[i, t]
      kl = np.exp(d) - d - 1
      per[i, t] = -min(rho * adv[i], clipped * adv[i]) + beta * kl
      ratios[i, t] = rho
  return per, ratios


def _aggregate(per, mask, mode, max_len=None, n_global=None):
  if mode == "grpo":
    return np.mean([(per[i] * mask[i]).sum() / mask[i].sum() for i in range(B)])
  if mode == "bnpo":
    return (per * mask).sum() / mask.sum()
  if mode == "dr_grpo":
    return (per * mask).sum() / (B * max_len)
  if mode == "dapo":
    return (per * mask).sum() / n_global
  raise AssertionError(mode)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_aggregations(aggregation):
  logp, old, ref, adv, mask = _pg_inputs(1)
  per, _ = _np_token_losses(logp, old, ref, adv, mask, 0.2, 0.2, beta=0.0)
  fn = jax.jit(functools.partial(losses.grpo_loss, aggregation=aggregation,
                                 max_completion_length=10))
  loss, _ = fn(logp, old, adv, mask, num_active_tokens_global=40)
  assert_close(loss, _aggregate(per, mask, aggregation, max_len=10,
                                n_global=40))


def test_grpo_loss_aggregation_defaults():
  logp, old, ref, adv, mask = _pg_inputs(2)
  per, _ = _np_token_losses(logp, old, ref, adv, mask, 0.2, 0.2, beta=0.0)
  dr, _ = losses.grpo_loss(logp, old, adv, mask, aggregation="dr_grpo")
  assert_close(dr, _aggregate(per, mask, "dr_grpo", max_len=T))
  dapo, _ = losses.grpo_loss(logp, old, adv, mask, aggregation="dapo")
  # With the whole batch local, DAPO's global token mean equals BNPO.
  assert_close(dapo, _aggregate(per, mask, "bnpo"))


def test_grpo_loss_clip_higher_and_kl():
  logp, old, ref, adv, mask = _pg_inputs(3)
  eps_low, eps_high, beta = 0.2, 0.28, 0.04
  per, ratios = _np_token_losses(logp, old, ref, adv, mask, eps_low, eps_high,
                                 beta)
  fn = jax.jit(functools.partial(losses.grpo_loss, eps_low=eps_low,
                                 eps_high=eps_high, beta=beta,
                                 aggregation="bnpo"))
  loss, metrics = fn(logp, old, adv, mask, ref_logp_bt=ref)
  assert_close(loss, _aggregate(per, mask, "bnpo"))
  a = adv[:, None]
  low = (ratios < 1 - eps_low) & (a < 0)
  high = (ratios > 1 + eps_high) & (a > 0)
  assert low[mask > 0].any() and high[mask > 0].any()
  assert_close(metrics["clip_ratio/low_mean"], (low * mask).sum() / mask.sum())
  assert_close(metrics["clip_ratio/high_mean"], (high * mask).sum() / mask.sum())
  assert_close(metrics["clip_ratio/region_mean"],
               ((low | high) * mask).sum() / mask.sum())
  assert_close(metrics["ratio_mean"], (ratios * mask).sum() / mask.sum())
  d = ref.astype(np.float64) - logp
  assert_close(metrics["kl"], ((np.exp(d) - d - 1) * mask).sum() / mask.sum())
  # Asymmetric ε differs from the symmetric loss on these inputs.
  sym, _ = losses.grpo_loss(logp, old, adv, mask, beta=beta, ref_logp_bt=ref,
                            aggregation="bnpo")
  assert abs(float(sym) - float(loss)) > 1e-4


def test_gspo_sequence_level_ratio():
  logp, old, ref, adv, mask = _pg_inputs(4)
  per, ratios = _np_token_losses(logp, old, ref, adv, mask, 3e-4, 4e-4,
                                 beta=0.0, sequence=True)
  fn = jax.jit(functools.partial(losses.grpo_loss, eps_low=3e-4,
                                 eps_high=4e-4, ratio_level="sequence"))
  loss, metrics = fn(logp, old, adv, mask)
  assert_close(loss, _aggregate(per, mask, "grpo"))
  assert_close(metrics["ratio_mean"], (ratios * mask).sum() / mask.sum())
  grad = jax.grad(lambda x: fn(x, old, adv, mask)[0])(logp)
  assert_finite_tree(grad)
  # Padding gets no gradient, even through the sequence-level mean.
  assert_close(np.asarray(grad) * (1 - mask), np.zeros((B, T)))


def test_grpo_loss_on_policy_gradient_is_advantage():
  # At ρ = 1 the surrogate's gradient is −A/|o_i|/B per token (grpo mode).
  _, old, _, adv, mask = _pg_inputs(5)
  grad = jax.grad(lambda x: losses.grpo_loss(x, old, adv, mask)[0])(old)
  expected = -adv[:, None] * mask / mask.sum(1, keepdims=True) / B
  assert_close(grad, expected)


def test_grpo_loss_empty_mask_and_errors():
  logp, old, ref, adv, _ = _pg_inputs(6)
  zeros = np.zeros((B, T), np.float32)
  for aggregation in ("grpo", "bnpo", "dr_grpo", "dapo"):
    fn = functools.partial(losses.grpo_loss, aggregation=aggregation,
                           beta=0.1)
    loss, metrics = jax.jit(fn)(logp, old, adv, zeros, ref_logp_bt=ref)
    assert_close(loss, 0.0)
    assert_finite_tree(metrics)
    assert_finite_tree(jax.grad(
        lambda x: fn(x, old, adv, zeros, ref_logp_bt=ref)[0])(logp))
  with pytest.raises(ValueError, match="aggregation"):
    losses.grpo_loss(logp, old, adv, zeros, aggregation="mean")
  with pytest.raises(ValueError, match="ref_logp_bt"):
    losses.grpo_loss(logp, old, adv, zeros, beta=0.1)
  with pytest.raises(ValueError, match="advantages_b"):
    losses.grpo_loss(logp, old, adv[:3], zeros)
  with pytest.raises(ValueError, match="old_logp_bt"):
    losses.grpo_loss(logp, old[:, :3], adv, zeros)


def _np_gae(r, v, mask, gamma, lam):
  r, v = r * mask, v * mask
  adv = np.zeros_like(r, dtype=np.float64)
  last = np.zeros(r.shape[0])
  for t in reversed(range(r.shape[1])):
    next_v = v[:, t + 1] if t < r.shape[1] - 1 else 0.0
    delta = r[:, t] + gamma * next_v - v[:, t]
    last = delta + gamma * lam * last
    adv[:, t] = last
  return adv * mask, (adv + v) * mask


def test_gae_matches_reverse_loop():
  rng = np.random.default_rng(7)
  r, v = rng.normal(size=(2, B, T)).astype(np.float32)
  _, _, _, _, mask = _pg_inputs()
  exp_adv, exp_ret = _np_gae(r.astype(np.float64), v.astype(np.float64), mask,
                             0.99, 0.9)
  adv, ret = jax.jit(functools.partial(losses.gae, gamma=0.99, lam=0.9))(
      r, v, mask)
  assert_close(adv, exp_adv)
  assert_close(ret, exp_ret)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
  r = np.array([[0.0, 0.0, 1.0, 5.0]], np.float32)  # 5.0 sits in padding.
  v = np.array([[0.5, 0.25, 0.75, 9.0]], np.float32)
  mask = np.array([[1, 1, 1, 0]], np.float32)
  adv, ret = losses.gae(r, v, mask, gamma=1.0, lam=1.0)
  assert_close(ret, [[1.0, 1.0, 1.0, 0.0]])
  assert_close(adv, [[0.5, 0.75, 0.25, 0.0]])


def test_whiten():
  rng = np.random.default_rng(8)
  x = rng.normal(3.0, 2.0, size=(B, T)).astype(np.float32)
  _, _, _, _, mask = _pg_inputs()
  vals = x[mask > 0].astype(np.float64)
  mean, var = vals.mean(), vals.var(ddof=1)
  expected = (x - mean) / np.sqrt(var + 1e-8) * mask
  assert_close(losses.whiten(x, mask), expected)
  assert_close(losses.whiten(x, mask, shift_mean=False),
               (expected + mean) * mask)
  assert_finite_tree(losses.whiten(x, np.zeros_like(mask)))


def test_ppo_value_loss():
  rng = np.random.default_rng(9)
  v, v_old, ret = rng.normal(size=(3, B, T)).astype(np.float32)
  _, _, _, _, mask = _pg_inputs()
  v64, old64, ret64 = (a.astype(np.float64) for a in (v, v_old, ret))
  clipped = np.clip(v64, old64 - 0.2, old64 + 0.2)
  l1, l2 = (v64 - ret64) ** 2, (clipped - ret64) ** 2
  expected = 0.5 * (np.maximum(l1, l2) * mask).sum() / mask.sum()
  loss, metrics = jax.jit(losses.ppo_value_loss)(v, v_old, ret, mask)
  assert_close(loss, expected)
  assert_close(metrics["clipfrac"], ((l2 > l1) * mask).sum() / mask.sum())
  assert_finite_tree(jax.grad(
      lambda x: losses.ppo_value_loss(x, v_old, ret, mask)[0])(v))


def test_ppo_policy_loss_is_token_mean_clipped_surrogate():
  logp, old, ref, _, mask = _pg_inputs(10)
  rng = np.random.default_rng(10)
  adv = rng.normal(size=(B, T)).astype(np.float32)
  rho = np.exp(logp.astype(np.float64) - old)
  per = np.maximum(-adv * rho, -adv * np.clip(rho, 0.9, 1.1))
  loss, _ = jax.jit(functools.partial(losses.ppo_policy_loss, clip=0.1))(
      logp, old, adv, mask)
  assert_close(loss, (per * mask).sum() / mask.sum())


def _ppo_inputs(seed):
  """Ratios and values spread so that every clip side is hit; padding holds
  finite values that must not count."""
  logp, old, _, _, mask = _pg_inputs(seed)
  rng = np.random.default_rng(seed)
  adv = rng.normal(size=(B, T)).astype(np.float32)
  v_old = rng.normal(size=(B, T)).astype(np.float32)
  v = (v_old + rng.uniform(-0.5, 0.5, size=(B, T))).astype(np.float32)
  ret = (v_old + rng.normal(0, 1.0, size=(B, T))).astype(np.float32)
  return logp, old, adv, v, v_old, ret, mask


def _np_ppo_loss(logp, old, adv, v, v_old, ret, mask, clip, value_clip,
                 vf_coef):
  """PPO (Schulman et al. 2017) per token, written longhand in float64:
  L^CLIP = min(ρA, clip(ρ, 1−ε, 1+ε)A), maximised, so its negative is the
  loss; value loss clipped around V_old as TRL's PPOTrainer; both averaged
  over the mask's tokens."""
  logp, old, adv, v, v_old, ret = (np.asarray(x, np.float64) for x in
                                   (logp, old, adv, v, v_old, ret))
  n = mask.sum()
  pg = vf = clipfrac = 0.0
  for i in range(B):
    for t in range(T):
      if not mask[i, t]:
        continue
      rho = np.exp(logp[i, t] - old[i, t])
      rho_clipped = min(max(rho, 1 - clip), 1 + clip)
      pg += -min(rho * adv[i, t], rho_clipped * adv[i, t]) / n
      v_clipped = min(max(v[i, t], v_old[i, t] - value_clip),
                      v_old[i, t] + value_clip)
      unclipped = (v[i, t] - ret[i, t]) ** 2
      clipped = (v_clipped - ret[i, t]) ** 2
      vf += 0.5 * max(unclipped, clipped) / n
      clipfrac += float(clipped > unclipped) / n
  return pg + vf_coef * vf, pg, vf, clipfrac


def test_ppo_loss_matches_paper_formulas():
  logp, old, adv, v, v_old, ret, mask = _ppo_inputs(12)
  hp = dict(clip=0.1, value_clip=0.2, vf_coef=0.3)
  total, pg, vf, clipfrac = _np_ppo_loss(logp, old, adv, v, v_old, ret, mask,
                                         **hp)
  assert 0 < clipfrac < 1  # both value branches are exercised
  loss, metrics = jax.jit(functools.partial(losses.ppo_loss, **hp))(
      logp, old, adv, v, v_old, ret, mask)
  assert_close(loss, total)
  assert_close(metrics["loss"], total)
  assert_close(metrics["policy/loss"], pg)
  assert_close(metrics["value/loss"], vf)
  assert_close(metrics["value/clipfrac"], clipfrac)
  rho = np.exp(logp.astype(np.float64) - old)
  clipped = ((rho < 0.9) & (adv < 0)) | ((rho > 1.1) & (adv > 0))
  assert clipped[mask > 0].any()
  assert_close(metrics["policy/clip_ratio/region_mean"],
               (clipped * mask).sum() / mask.sum())


def test_ppo_loss_is_the_steps_combination_of_its_pieces():
  # What the PPO step computed inline before `ppo_loss` existed.
  logp, old, adv, v, v_old, ret, mask = _ppo_inputs(13)
  pg, pg_m = losses.ppo_policy_loss(logp, old, adv, mask, clip=0.2)
  vf, vf_m = losses.ppo_value_loss(v, v_old, ret, mask, clip=0.15)
  expected = {"loss": pg + 0.5 * vf,
              **{f"policy/{k}": x for k, x in pg_m.items()},
              **{f"value/{k}": x for k, x in vf_m.items()}}
  loss, metrics = losses.ppo_loss(logp, old, adv, v, v_old, ret, mask,
                                  clip=0.2, value_clip=0.15, vf_coef=0.5)
  assert_close(loss, pg + 0.5 * vf)
  assert sorted(metrics) == sorted(expected)
  for k in expected:
    assert_close(metrics[k], expected[k])


def test_ppo_loss_gradients():
  logp, old, adv, v, v_old, ret, mask = _ppo_inputs(14)
  fn = functools.partial(losses.ppo_loss, vf_coef=0.25)
  g_logp, g_v = jax.grad(lambda a, b: fn(a, old, adv, b, v_old, ret, mask)[0],
                         argnums=(0, 1))(logp, v)
  assert_close(np.asarray(g_logp) * (1 - mask), np.zeros((B, T)))
  # d/dV of vf_coef · ½ max((V−R)², (clip(V)−R)²) / Σm, written out.
  v64, old64, ret64 = (a.astype(np.float64) for a in (v, v_old, ret))
  v_clipped = np.clip(v64, old64 - 0.2, old64 + 0.2)
  inside = (v64 > old64 - 0.2) & (v64 < old64 + 0.2)
  use_clipped = (v_clipped - ret64) ** 2 > (v64 - ret64) ** 2
  dv = np.where(use_clipped, (v_clipped - ret64) * inside, v64 - ret64)
  assert_close(g_v, 0.25 * dv * mask / mask.sum())
  zeros = np.zeros((B, T), np.float32)
  loss, metrics = jax.jit(fn)(logp, old, adv, v, v_old, ret, zeros)
  assert_close(loss, 0.0)
  assert_finite_tree(metrics)
  assert_finite_tree(jax.grad(
      lambda a: fn(a, old, adv, v, v_old, ret, zeros)[0])(logp))


def test_ppo_token_rewards():
  rng = np.random.default_rng(11)
  logp, ref = rng.normal(-1.0, 0.5, size=(2, 2, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], np.float32)
  scores = np.array([2.0, -1.0], np.float32)
  has_eos = np.array([True, False])
  kl = logp.astype(np.float64) - ref
  expected = -0.05 * kl
  expected[0, 2] += 2.0
  expected[1, 3] += -1.0 - 0.5
  expected *= mask
  got = losses.ppo_token_rewards(scores, logp, ref, mask, kl_coef=0.05,
                                 has_eos_b=has_eos, missing_eos_penalty=0.5)
  assert_close(got, expected)


def test_adaptive_kl_coef():
  assert_close(losses.adaptive_kl_coef(0.1, 8.0, target=6.0, horizon=10000,
                                       n_steps=256),
               0.1 * (1 + 0.2 * 256 / 10000))
  assert_close(losses.adaptive_kl_coef(0.1, 5.7, target=6.0, horizon=10000,
                                       n_steps=64),
               0.1 * (1 + (5.7 / 6.0 - 1) * 64 / 10000))
  assert_close(losses.adaptive_kl_coef(0.1, 0.0, target=6.0, horizon=100,
                                       n_steps=10),
               0.1 * (1 - 0.2 * 10 / 100))
