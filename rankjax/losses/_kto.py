"""Kahneman-Tversky optimisation on unpaired desirable/undesirable data."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses import _common

Array = jax.Array


def kto_loss(
    policy_logps_b: Array,
    ref_logps_b: Array,
    policy_kl_logps_b: Array,
    ref_kl_logps_b: Array,
    is_desirable_b: Array,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
  """KTO (Ethayarajh et al. 2024, arXiv 2402.01306).

  With s = log π(y|x) − log π_ref(y|x) and the reference point

    z₀ = stop_gradient(max(0, mean_b [log π(y'|x) − log π_ref(y'|x)]))

  estimated on mismatched pairs (x, y') (completions shifted to other
  prompts in the batch), the per-example loss is

    desirable:   λ_D (1 − σ(β(s − z₀)))
    undesirable: λ_U (1 − σ(β(z₀ − s)))

  averaged over the batch. z₀ is detached (as in the paper and TRL): it is a
  baseline, not something to optimise. Under jit with a sharded batch the
  mean is over the global batch, like TRL's gather.

  Args:
    policy_logps_b: float[B] Σ_t log π of each completion.
    ref_logps_b: float[B] same under the reference model.
    policy_kl_logps_b: float[B] policy log-probs of the mismatched pairs.
    ref_kl_logps_b: float[B] reference log-probs of the mismatched pairs.
    is_desirable_b: bool[B] label of each completion.
    beta: β.
    desirable_weight: λ_D.
    undesirable_weight: λ_U.

  Returns:
    (loss, metrics) with loss, kl (z₀), rewards/chosen and rewards/rejected
    (mean β·s per class; 0 when a class is absent), logps/chosen,
    logps/rejected, count/desirable, count/undesirable.
  """
  _common.check_same_shape(policy_logps_b=policy_logps_b,
                           ref_logps_b=ref_logps_b,
                           policy_kl_logps_b=policy_kl_logps_b,
                           ref_kl_logps_b=ref_kl_logps_b,
                           is_desirable_b=is_desirable_b)
  f32 = lambda x: jnp.asarray(x).astype(jnp.float32)
  policy = f32(policy_logps_b)
  s_b = policy - f32(ref_logps_b)
  kl = jnp.mean(f32(policy_kl_logps_b) - f32(ref_kl_logps_b))
  z0 = jax.lax.stop_gradient(jnp.maximum(kl, 0.0))

  desirable_b = jnp.asarray(is_desirable_b).astype(bool)
  losses_b = jnp.where(
      desirable_b,
      desirable_weight * (1.0 - jax.nn.sigmoid(beta * (s_b - z0))),
      undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - s_b))))
  loss = jnp.mean(losses_b)

  rewards_b = jax.lax.stop_gradient(beta * s_b)
  undesirable_b = ~desirable_b
  metrics = {
      "loss": loss,
      "kl": z0,
      "rewards/chosen": _common.masked_mean(rewards_b, desirable_b),
      "rewards/rejected": _common.masked_mean(rewards_b, undesirable_b),
      "logps/chosen": _common.masked_mean(jax.lax.stop_gradient(policy),
                                          desirable_b),
      "logps/rejected": _common.masked_mean(jax.lax.stop_gradient(policy),
                                            undesirable_b),
      "count/desirable": jnp.sum(desirable_b).astype(jnp.float32),
      "count/undesirable": jnp.sum(undesirable_b).astype(jnp.float32),
  }
  return loss, metrics
