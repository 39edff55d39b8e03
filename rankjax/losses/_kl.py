"""Per-token KL estimators of KL(π ‖ π_ref) from sampled-token log-probs
(Schulman 2020, "Approximating KL divergence"), shared by GRPO and PPO."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses._common import f32

Array = jax.Array


def kl_k1(logp: Array, ref_logp: Array) -> Array:
  """k1 = log π − log π_ref (unbiased, can be negative; Schulman 2020)."""
  return f32(logp) - f32(ref_logp)


def kl_k2(logp: Array, ref_logp: Array) -> Array:
  """k2 = ½ (log π − log π_ref)²."""
  return 0.5 * jnp.square(f32(logp) - f32(ref_logp))


def kl_k3(logp: Array, ref_logp: Array) -> Array:
  """k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0 (unbiased; GRPO's KL)."""
  d = f32(ref_logp) - f32(logp)
  # expm1 keeps the difference of two ~1 numbers exact for small d.
  return jnp.expm1(d) - d


# By estimator name, for the losses' `kl_estimator` arguments.
KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
