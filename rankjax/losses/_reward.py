"""Pairwise (Bradley-Terry) reward-model loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses import _common

Array = jax.Array


def reward_model_loss(
    r_chosen_b: Array,
    r_rejected_b: Array,
    *,
    margin_b: Array | None = None,
    center_coef: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
  """Bradley-Terry reward-model loss (Ouyang et al. 2022, arXiv 2203.02155).

    L = mean_b −log σ(r_c − r_r − m) + c · mean_b (r_c + r_r)²

  m is an optional per-pair margin (Llama 2); the centering term with
  coefficient c (Eisenstein et al. 2023) keeps rewards near zero mean.

  Args:
    r_chosen_b: float[B] scalar rewards of the chosen completions.
    r_rejected_b: float[B] rewards of the rejected completions.
    margin_b: optional float[B] margins.
    center_coef: c.

  Returns:
    (loss, metrics) with loss, accuracy (r_c > r_r), margin (mean r_c − r_r),
    rewards/chosen, rewards/rejected.
  """
  _common.check_same_shape(r_chosen_b=r_chosen_b, r_rejected_b=r_rejected_b,
                           margin_b=margin_b)
  r_c = jnp.asarray(r_chosen_b).astype(jnp.float32)
  r_r = jnp.asarray(r_rejected_b).astype(jnp.float32)
  diff_b = r_c - r_r
  logits_b = diff_b
  if margin_b is not None:
    logits_b = diff_b - jnp.asarray(margin_b).astype(jnp.float32)
  loss = -jnp.mean(jax.nn.log_sigmoid(logits_b))
  if center_coef:
    loss = loss + center_coef * jnp.mean(jnp.square(r_c + r_r))
  metrics = {
      "loss": loss,
      "accuracy": jnp.mean((diff_b > 0).astype(jnp.float32)),
      "margin": jnp.mean(diff_b),
      "rewards/chosen": jnp.mean(r_c),
      "rewards/rejected": jnp.mean(r_r),
  }
  return loss, metrics
