"""Policy-gradient pieces for GRPO-family and PPO training, on plain arrays.

Advantage estimators (GRPO, RLOO, REINFORCE++, GAE), KL estimators, the
clipped surrogate with its aggregation modes, the PPO value loss and the
adaptive KL controller. Formulas follow REFERENCES.md; where TRL and the
papers differ, the docstring says which one is implemented.

Axis letters: B batch (sequences; for group estimators B = prompts × G,
each prompt's G samples contiguous), G group size, T completion tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses import _common

Array = jax.Array

_SCALES = ("group", "batch", "none")
_RATIO_LEVELS = ("token", "sequence")
_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
_KL_ESTIMATORS = ("k1", "k2", "k3")


def _f32(x) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def _grouped(rewards: Array, group_size: int) -> Array:
  """float32[B] -> float32[B / G, G], checking that G divides B."""
  r = _f32(rewards).reshape(-1)
  if group_size < 1 or r.shape[0] % group_size:
    raise ValueError(f"group_size={group_size} must divide the number of "
                     f"rewards ({r.shape[0]}).")
  return r.reshape(-1, group_size)


def _std_unbiased(x: Array, axis=None, keepdims: bool = False) -> Array:
  """Sample std (ddof=1), as torch.Tensor.std(); 0 for a single sample."""
  n = x.size if axis is None else x.shape[axis]
  dev = x - jnp.mean(x, axis=axis, keepdims=True)
  var = jnp.sum(jnp.square(dev), axis=axis, keepdims=keepdims) / max(n - 1, 1)
  return jnp.sqrt(var)


def group_advantages(
    rewards_b: Array,
    group_size: int,
    *,
    scale: str = "group",
    eps: float = 1e-4,
) -> Array:
  """GRPO advantages (Shao et al. 2024, arXiv 2402.03300).

    A_i = (r_i − mean_g r) / (std + eps)

  scale="group": std over the group (GRPO); "batch": std of all rewards in
  the batch (Liu et al. 2025 suggest it is less biased); "none": no division
  (Dr. GRPO, arXiv 2503.20783). std is the *unbiased* sample std (ddof=1)
  to match TRL, which calls torch's .std(); eps=1e-4 is TRL's too.

  Args:
    rewards_b: float[B] rewards, the G samples of each prompt contiguous.
    group_size: G.

  Returns:
    float32[B] advantages, same shape as rewards_b.
  """
  _common.check_choice("scale", scale, _SCALES)
  r_pg = _grouped(rewards_b, group_size)
  adv_pg = r_pg - jnp.mean(r_pg, axis=1, keepdims=True)
  if scale == "group":
    adv_pg = adv_pg / (_std_unbiased(r_pg, axis=1, keepdims=True) + eps)
  elif scale == "batch":
    adv_pg = adv_pg / (_std_unbiased(r_pg) + eps)
  return adv_pg.reshape(jnp.shape(rewards_b))


def rloo_advantages(rewards_b: Array, group_size: int) -> Array:
  """RLOO (Ahmadian et al. 2024, arXiv 2402.14740): A_i = r_i − mean_{j≠i} r_j.

  Args:
    rewards_b: float[B], the G ≥ 2 samples of each prompt contiguous.
    group_size: G.
  """
  if group_size < 2:
    raise ValueError(f"RLOO needs group_size >= 2, got {group_size}.")
  r_pg = _grouped(rewards_b, group_size)
  baseline_pg = (jnp.sum(r_pg, axis=1, keepdims=True) - r_pg) / (group_size - 1)
  return (r_pg - baseline_pg).reshape(jnp.shape(rewards_b))


def reinforce_pp_advantages(
    rewards_b: Array,
    group_size: int | None = None,
    *,
    eps: float = 1e-8,
) -> Array:
  """REINFORCE++ (Hu 2025, arXiv 2501.03262): whiten over the global batch.

    a_i = r_i − mean_g r   (only with group_size: "REINFORCE++ baseline")
    A_i = (a_i − mean_B a) / (std_B a + eps)

  std is the population std (ddof=0) over the whole batch; under jit with a
  sharded batch, the batch is global.
  """
  if group_size is None:
    a = _f32(rewards_b).reshape(-1)
  else:
    r_pg = _grouped(rewards_b, group_size)
    a = (r_pg - jnp.mean(r_pg, axis=1, keepdims=True)).reshape(-1)
  adv = (a - jnp.mean(a)) / (jnp.std(a) + eps)
  return adv.reshape(jnp.shape(rewards_b))


def kl_k1(logp: Array, ref_logp: Array) -> Array:
  """k1 = log π − log π_ref (unbiased, can be negative; Schulman 2020)."""
  return _f32(logp) - _f32(ref_logp)


def kl_k2(logp: Array, ref_logp: Array) -> Array:
  """k2 = ½ (log π − log π_ref)²."""
  return 0.5 * jnp.square(_f32(logp) - _f32(ref_logp))


def kl_k3(logp: Array, ref_logp: Array) -> Array:
  """k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0 (unbiased; GRPO's KL)."""
  d = _f32(ref_logp) - _f32(logp)
  # expm1 keeps the difference of two ~1 numbers exact for small d.
  return jnp.expm1(d) - d


_KL = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def policy_gradient_loss(
    logp_bt: Array,
    old_logp_bt: Array,
    advantages_b: Array,
    mask_bt: Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    ratio_level: str = "token",
    aggregation: str = "grpo",
    max_completion_length: int | None = None,
    num_active_tokens_global: Array | int | None = None,
    ref_logp_bt: Array | None = None,
    beta: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
  """Clipped surrogate of the GRPO family (PPO's policy loss, generalised).

  Per token, with ρ the importance ratio and A the advantage:

    ℓ_t = −min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high) A) + β · KL_k3(π, π_ref)

  ratio_level="token": ρ_t = exp(log π_t − log π_old,t) (PPO/GRPO);
  "sequence": ρ_i = exp(mean_t (log π_t − log π_old,t)) (GSPO, arXiv
  2507.18071). ε_high > ε_low is DAPO's clip-higher (arXiv 2503.14476).

  Aggregation of ℓ over the completion mask m:
    grpo:    mean_i (Σ_t m ℓ / max(|o_i|, 1))           (DeepSeekMath; rows
             without tokens count as 0, as in TRL)
    bnpo:    Σ m ℓ / Σ m  over the local batch           (token mean; PPO)
    dr_grpo: Σ m ℓ / (B · max_completion_length)        (Dr. GRPO; default
             max_completion_length = T)
    dapo:    Σ m ℓ / num_active_tokens_global           (DAPO; default Σ m)
  Pass num_active_tokens_global when this call sees part of the batch
  (gradient accumulation), so every micro-batch uses the same normaliser.

  Args:
    logp_bt: float[B, T] log π of the sampled tokens (differentiated).
    old_logp_bt: float[B, T] log π_old from sampling time.
    advantages_b: float[B] per-sequence (GRPO) or float[B, T] per-token (PPO).
    mask_bt: [B, T] completion mask.
    ref_logp_bt: float[B, T] reference log-probs; required when beta ≠ 0.
    beta: KL coefficient.

  Returns:
    (loss, metrics) with loss, clip_ratio/low_mean, clip_ratio/high_mean,
    clip_ratio/region_mean, ratio_mean and kl (when ref_logp_bt is given).
  """
  _common.check_choice("ratio_level", ratio_level, _RATIO_LEVELS)
  _common.check_choice("aggregation", aggregation, _AGGREGATIONS)
  _common.check_same_shape(logp_bt=logp_bt, old_logp_bt=old_logp_bt,
                           mask_bt=mask_bt, ref_logp_bt=ref_logp_bt)
  if beta and ref_logp_bt is None:
    raise ValueError("beta != 0 needs ref_logp_bt for the KL term.")
  b, t = jnp.shape(logp_bt)
  adv = _f32(advantages_b)
  if adv.shape == (b,):
    adv_bt = adv[:, None]
  elif adv.shape == (b, t):
    adv_bt = adv
  else:
    raise ValueError(f"advantages_b must have shape {(b,)} or {(b, t)}, got "
                     f"{adv.shape}.")

  log_ratio_bt = _f32(logp_bt) - _f32(old_logp_bt)
  if ratio_level == "sequence":
    log_ratio_bt = _common.masked_mean(log_ratio_bt, mask_bt, axis=-1)[:, None]
  ratio_bt = jnp.exp(log_ratio_bt)
  clipped_bt = jnp.clip(ratio_bt, 1.0 - eps_low, 1.0 + eps_high)
  # [B, 1] for a sequence-level ratio with per-sequence advantages.
  loss_bt = jnp.broadcast_to(
      -jnp.minimum(ratio_bt * adv_bt, clipped_bt * adv_bt), (b, t))
  metrics = {}
  if ref_logp_bt is not None:
    kl_bt = kl_k3(logp_bt, ref_logp_bt)
    metrics["kl"] = jax.lax.stop_gradient(_common.masked_mean(kl_bt, mask_bt))
    if beta:
      loss_bt = loss_bt + beta * kl_bt

  if aggregation == "grpo":
    loss = jnp.mean(_common.masked_mean(loss_bt, mask_bt, axis=-1))
  elif aggregation == "bnpo":
    loss = _common.masked_mean(loss_bt, mask_bt)
  elif aggregation == "dr_grpo":
    length = t if max_completion_length is None else max_completion_length
    loss = _common.masked_sum(loss_bt, mask_bt) / (b * length)
  else:  # dapo
    if num_active_tokens_global is None:
      num_active_tokens_global = jnp.sum(jnp.asarray(mask_bt) != 0)
    # Clamp like TRL: an all-padding batch gives 0, not NaN.
    loss = _common.masked_sum(loss_bt, mask_bt) / jnp.maximum(
        _f32(num_active_tokens_global), 1.0)

  # Diagnostics, not differentiated. A clip only matters on the side where
  # it bounds the objective: ρ < 1 − ε_low with A < 0, ρ > 1 + ε_high with A > 0.
  ratio_bt = jax.lax.stop_gradient(jnp.broadcast_to(ratio_bt, (b, t)))
  low_bt = (ratio_bt < 1.0 - eps_low) & (adv_bt < 0)
  high_bt = (ratio_bt > 1.0 + eps_high) & (adv_bt > 0)
  metrics.update({
      "loss": loss,
      "clip_ratio/low_mean": _common.masked_mean(low_bt, mask_bt),
      "clip_ratio/high_mean": _common.masked_mean(high_bt, mask_bt),
      "clip_ratio/region_mean": _common.masked_mean(low_bt | high_bt, mask_bt),
      "ratio_mean": _common.masked_mean(ratio_bt, mask_bt),
  })
  return loss, metrics


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

  i.e. `policy_gradient_loss` with symmetric ε and token-mean ("bnpo")
  aggregation, as TRL's PPOTrainer.
  """
  return policy_gradient_loss(logp_bt, old_logp_bt, advantages_bt, mask_bt,
                              eps_low=clip, eps_high=clip, aggregation="bnpo")


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
  _common.check_choice("kl_estimator", kl_estimator, _KL_ESTIMATORS)
  _common.check_same_shape(logp_bt=logp_bt, ref_logp_bt=ref_logp_bt,
                           mask_bt=mask_bt)
  scores = _f32(scores_b)
  if has_eos_b is not None and missing_eos_penalty:
    scores = scores - missing_eos_penalty * (~jnp.asarray(has_eos_b, bool))
  valid_bt = jnp.asarray(mask_bt) != 0
  t = valid_bt.shape[1]
  # Last valid position per row (works for left or right padding).
  last_b = t - 1 - jnp.argmax(valid_bt[:, ::-1], axis=-1)
  at_last_bt = (jnp.arange(t)[None, :] == last_b[:, None]) & valid_bt
  rewards_bt = -kl_coef * jax.lax.stop_gradient(
      _KL[kl_estimator](logp_bt, ref_logp_bt))
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

  with r and V zeroed outside the mask, so the value after the last token
  is 0 (as TRL's PPOTrainer). Whitening of A is left to `whiten`.

  Args:
    rewards_bt: float[B, T] per-token rewards (`ppo_token_rewards`).
    values_bt: float[B, T] value predictions V_t.
    mask_bt: [B, T] completion mask.

  Returns:
    (advantages_bt, returns_bt), float32[B, T], 0 outside the mask.
  """
  _common.check_same_shape(rewards_bt=rewards_bt, values_bt=values_bt,
                           mask_bt=mask_bt)
  valid_bt = jnp.asarray(mask_bt) != 0
  r_bt = jnp.where(valid_bt, _f32(rewards_bt), 0.0)
  v_bt = jnp.where(valid_bt, _f32(values_bt), 0.0)
  next_v_bt = jnp.pad(v_bt[:, 1:], ((0, 0), (0, 1)))
  delta_bt = r_bt + gamma * next_v_bt - v_bt

  def step(next_adv_b, delta_b):
    adv_b = delta_b + gamma * lam * next_adv_b
    return adv_b, adv_b

  # Scan over time (leading axis), newest first.
  _, adv_tb = jax.lax.scan(step, jnp.zeros_like(delta_bt[:, 0]), delta_bt.T,
                           reverse=True)
  adv_bt = jnp.where(valid_bt, adv_tb.T, 0.0)
  returns_bt = jnp.where(valid_bt, adv_bt + v_bt, 0.0)
  return adv_bt, returns_bt


def whiten(x: Array, mask: Array | None = None, shift_mean: bool = True, *,
           eps: float = 1e-8) -> Array:
  """Masked whitening, as TRL's masked_whiten.

    (x − mean) / sqrt(var + eps)  (+ mean again when shift_mean=False)

  mean and the unbiased (ddof=1) variance are over positions with mask ≠ 0;
  positions outside the mask are set to 0.
  """
  x = _f32(x)
  valid = jnp.ones(x.shape, bool) if mask is None else jnp.asarray(mask) != 0
  mean = _common.masked_mean(x, valid)
  n = jnp.sum(valid).astype(jnp.float32)
  sq = _common.masked_sum(jnp.square(x - mean), valid)
  var = sq / jnp.maximum(n - 1.0, 1.0)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return jnp.where(valid, out, 0.0)


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
  v, v_old, ret = _f32(values_bt), _f32(old_values_bt), _f32(returns_bt)
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


def adaptive_kl_coef(coef, kl, *, target: float, horizon: float,
                     n_steps: int) -> Array:
  """Adaptive KL controller (Ziegler et al. 2019, arXiv 1909.08593).

    coef ← coef · (1 + clip(KL / target − 1, −0.2, 0.2) · n_steps / horizon)
  """
  error = jnp.clip(_f32(kl) / target - 1.0, -0.2, 0.2)
  return _f32(coef) * (1.0 + error * n_steps / horizon)
