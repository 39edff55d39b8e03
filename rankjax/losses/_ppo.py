"""PPO losses on plain arrays (Schulman et al. 2017, arXiv 1707.06347), as
RLHF uses them (Ouyang et al. 2022, arXiv 2203.02155): per-token rewards,
GAE, whitening, the clipped policy and value losses, their sum `ppo_loss`
and the adaptive KL controller. Formulas: see docs/references.md; where TRL
and the papers differ, the docstring says which one is implemented.

Axis letters: B batch (sequences), T completion tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses import _common
from rankjax.losses._common import f32
from rankjax.losses._grpo import grpo_loss
from rankjax.losses._kl import KL_ESTIMATORS

Array = jax.Array


def ppo_token_rewards(
    scores_b: Array,
    logp_bt: Array,
    ref_logp_bt: Array,
    mask_bt: Array,
    *,
    kl_coef: float,
    kl_estimator: str = "k1",
    has_eos_b: Array | None = None,
    missing_eos_penalty: float = 0.0,
) -> Array:
  """Per-token PPO rewards (Ouyang et al. 2022; Ziegler et al. 2019).

    r_t = −kl_coef · KL_t + [t = last completion token] · (score − penalty)

  penalty = missing_eos_penalty where has_eos_b is False. Positions outside
  the mask get 0. KL_t is k1 (default) or k3 of log π vs log π_ref.

  Returns:
    float32[B, T] rewards for `gae`.
  """
  _common.check_choice("kl_estimator", kl_estimator, tuple(KL_ESTIMATORS))
  _common.check_same_shape(logp_bt=logp_bt, ref_logp_bt=ref_logp_bt,
                           mask_bt=mask_bt)
  scores = f32(scores_b)
  if has_eos_b is not None and missing_eos_penalty:
    scores = scores - missing_eos_penalty * (~jnp.asarray(has_eos_b, bool))
  valid_bt = jnp.asarray(mask_bt) != 0
  t = valid_bt.shape[1]
  # Last valid position per row (works for left or right padding).
  last_b = t - 1 - jnp.argmax(valid_bt[:, ::-1], axis=-1)
  at_last_bt = (jnp.arange(t)[None, :] == last_b[:, None]) & valid_bt
  rewards_bt = -kl_coef * jax.lax.stop_gradient(
      KL_ESTIMATORS[kl_estimator](logp_bt, ref_logp_bt))
  rewards_bt = rewards_bt + at_last_bt * scores[:, None]
  return jnp.where(valid_bt, rewards_bt, 0.0)


def gae(
    rewards_bt: Array,
    values_bt: Array,
    mask_bt: Array,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Array, Array]:
  """Generalised advantage estimation (Schulman et al. 2015, arXiv 1506.02438).

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t

  over the masked positions only: t + 1 is the next position inside the
  mask (a multi-turn transcript's time axis is the model's own tokens; an
  environment observation between two turns is skipped, not a step), and
  the value after the last one is 0 (as TRL's PPOTrainer). Whitening of A is
  left to `whiten`.

  Args:
    rewards_bt: float[B, T] per-token rewards (`ppo_token_rewards`).
    values_bt: float[B, T] value predictions V_t.
    mask_bt: [B, T] completion mask (the model's tokens).

  Returns:
    (advantages_bt, returns_bt), float32[B, T], 0 outside the mask.
  """
  _common.check_same_shape(rewards_bt=rewards_bt, values_bt=values_bt,
                           mask_bt=mask_bt)
  valid_bt = jnp.asarray(mask_bt) != 0
  # Masked positions first, in order: the recursion then runs over
  # consecutive slots, and the result is scattered back.
  order_bt = jnp.argsort(~valid_bt, axis=1, stable=True)
  take = lambda x: jnp.take_along_axis(x, order_bt, axis=1)
  valid_c = take(valid_bt)
  r_bt = jnp.where(valid_c, take(f32(rewards_bt)), 0.0)
  v_bt = jnp.where(valid_c, take(f32(values_bt)), 0.0)
  next_v_bt = jnp.pad(v_bt[:, 1:], ((0, 0), (0, 1)))
  delta_bt = r_bt + gamma * next_v_bt - v_bt

  def step(next_adv_b, delta_b):
    adv_b = delta_b + gamma * lam * next_adv_b
    return adv_b, adv_b

  # Scan over time (leading axis), newest first.
  _, adv_tb = jax.lax.scan(step, jnp.zeros_like(delta_bt[:, 0]), delta_bt.T,
                           reverse=True)
  adv_c = jnp.where(valid_c, adv_tb.T, 0.0)
  inverse_bt = jnp.argsort(order_bt, axis=1)
  adv_bt = jnp.take_along_axis(adv_c, inverse_bt, axis=1)
  returns_bt = jnp.where(valid_bt, adv_bt + f32(values_bt), 0.0)
  return adv_bt, returns_bt


def whiten(x: Array, mask: Array | None = None, shift_mean: bool = True, *,
           eps: float = 1e-8) -> Array:
  """Masked whitening, as TRL's masked_whiten.

    (x − mean) / sqrt(var + eps)  (+ mean again when shift_mean=False)

  mean and the unbiased (ddof=1) variance are over positions with mask ≠ 0;
  positions outside the mask are set to 0.
  """
  x = f32(x)
  valid = jnp.ones(x.shape, bool) if mask is None else jnp.asarray(mask) != 0
  mean = _common.masked_mean(x, valid)
  n = jnp.sum(valid).astype(jnp.float32)
  sq = _common.masked_sum(jnp.square(x - mean), valid)
  var = sq / jnp.maximum(n - 1.0, 1.0)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return jnp.where(valid, out, 0.0)


def ppo_policy_loss(
    logp_bt: Array,
    old_logp_bt: Array,
    advantages_bt: Array,
    mask_bt: Array,
    *,
    clip: float = 0.2,
) -> tuple[Array, dict[str, Array]]:
  """PPO clipped policy loss (Schulman et al. 2017, arXiv 1707.06347).

    L = Σ m · max(−Aρ, −A clip(ρ, 1 − ε, 1 + ε)) / Σ m,  ρ = exp(log π − log π_old)

  i.e. `grpo_loss` with symmetric ε and token-mean ("bnpo") aggregation, as
  TRL's PPOTrainer.
  """
  return grpo_loss(logp_bt, old_logp_bt, advantages_bt, mask_bt,
                   eps_low=clip, eps_high=clip, aggregation="bnpo")


def ppo_value_loss(
    values_bt: Array,
    old_values_bt: Array,
    returns_bt: Array,
    mask_bt: Array,
    *,
    clip: float = 0.2,
) -> tuple[Array, dict[str, Array]]:
  """Clipped PPO value loss (as in OpenAI's and TRL's PPO).

    L = ½ · Σ m · max((V − R)², (clip(V, V_old − ε, V_old + ε) − R)²) / Σ m

  Returns:
    (loss, metrics) with loss, clipfrac (share of tokens where the clipped
    term is larger) and value_mean.
  """
  _common.check_same_shape(values_bt=values_bt, old_values_bt=old_values_bt,
                           returns_bt=returns_bt, mask_bt=mask_bt)
  v, v_old, ret = f32(values_bt), f32(old_values_bt), f32(returns_bt)
  v_clipped = jnp.clip(v, v_old - clip, v_old + clip)
  unclipped = jnp.square(v - ret)
  clipped = jnp.square(v_clipped - ret)
  loss = 0.5 * _common.masked_mean(jnp.maximum(unclipped, clipped), mask_bt)
  metrics = {
      "loss": loss,
      "clipfrac": _common.masked_mean(clipped > unclipped, mask_bt),
      "value_mean": _common.masked_mean(jax.lax.stop_gradient(v), mask_bt),
  }
  return loss, metrics


def ppo_loss(
    logp_bt: Array,
    old_logp_bt: Array,
    advantages_bt: Array,
    values_bt: Array,
    old_values_bt: Array,
    returns_bt: Array,
    mask_bt: Array,
    *,
    clip: float = 0.2,
    value_clip: float = 0.2,
    vf_coef: float = 0.5,
) -> tuple[Array, dict[str, Array]]:
  """PPO's loss on one minibatch: clipped policy + vf_coef · clipped value.

    ρ = exp(log π − log π_old)
    L_π = Σ m · max(−Aρ, −A clip(ρ, 1 − ε, 1 + ε)) / Σ m
    L_V = ½ · Σ m · max((V − R)², (clip(V, V_old − ε_v, V_old + ε_v) − R)²) / Σ m
    L   = L_π + vf_coef · L_V

  (Schulman et al. 2017, arXiv 1707.06347; the value clip as in OpenAI's
  and TRL's PPO.) One mask m serves both terms (TRL's value mask reaches
  one token past the completion). A and R come from `gae` on
  `ppo_token_rewards`, A whitened with `whiten`; they and V_old are
  constants here.

  Args:
    logp_bt: float[B, T] log π of the sampled tokens (differentiated).
    old_logp_bt: float[B, T] log π_old from sampling time.
    advantages_bt: float[B, T] advantages A.
    values_bt: float[B, T] value predictions V (differentiated).
    old_values_bt: float[B, T] value predictions V_old at sampling time.
    returns_bt: float[B, T] returns R.
    mask_bt: [B, T] completion mask.
    clip: ε, the policy ratio clip.
    value_clip: ε_v, the value clip around V_old.
    vf_coef: weight of the value loss.

  Returns:
    (loss, metrics) with loss, and `ppo_policy_loss`'s metrics under
    "policy/" and `ppo_value_loss`'s under "value/".
  """
  pg, pg_metrics = ppo_policy_loss(logp_bt, old_logp_bt, advantages_bt,
                                   mask_bt, clip=clip)
  vf, vf_metrics = ppo_value_loss(values_bt, old_values_bt, returns_bt,
                                  mask_bt, clip=value_clip)
  loss = pg + vf_coef * vf
  metrics = {"loss": loss,
             **{f"policy/{k}": v for k, v in pg_metrics.items()},
             **{f"value/{k}": v for k, v in vf_metrics.items()}}
  return loss, metrics


def adaptive_kl_coef(coef, kl, *, target: float, horizon: float,
                     n_steps: int) -> Array:
  """Adaptive KL controller (Ziegler et al. 2019, arXiv 1909.08593).

    coef ← coef · (1 + clip(KL / target − 1, −0.2, 0.2) · n_steps / horizon)
  """
  error = jnp.clip(f32(kl) / target - 1.0, -0.2, 0.2)
  return f32(coef) * (1.0 + error * n_steps / horizon)
