"""GRPO-family losses on plain arrays: group advantage estimators and the
clipped surrogate with its aggregation modes (GRPO, BNPO, Dr. GRPO, DAPO)
and ratio levels (token; sequence as GSPO). Formulas: see docs/references.md;
where TRL and the papers differ, the docstring says which one is implemented.

Axis letters: B batch (sequences; for group estimators B = prompts × G,
each prompt's G samples contiguous), G group size, T completion tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses import _common
from rankjax.losses._common import f32
from rankjax.losses._kl import kl_k3

Array = jax.Array

_SCALES = ("group", "batch", "none")
_RATIO_LEVELS = ("token", "sequence")
_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")


def _grouped(rewards: Array, group_size: int) -> Array:
  """float32[B] -> float32[B / G, G], checking that G divides B."""
  r = f32(rewards).reshape(-1)
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
    a = f32(rewards_b).reshape(-1)
  else:
    r_pg = _grouped(rewards_b, group_size)
    a = (r_pg - jnp.mean(r_pg, axis=1, keepdims=True)).reshape(-1)
  adv = (a - jnp.mean(a)) / (jnp.std(a) + eps)
  return adv.reshape(jnp.shape(rewards_b))


def grpo_loss(
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
  """GRPO loss (Shao et al. 2024, arXiv 2402.03300): the clipped surrogate.

  PPO's policy loss, generalised to the GRPO family's variants.

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
  adv = f32(advantages_b)
  if adv.shape == (b,):
    adv_bt = adv[:, None]
  elif adv.shape == (b, t):
    adv_bt = adv
  else:
    raise ValueError(f"advantages_b must have shape {(b,)} or {(b, t)}, got "
                     f"{adv.shape}.")

  log_ratio_bt = f32(logp_bt) - f32(old_logp_bt)
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
        f32(num_active_tokens_global), 1.0)

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
