"""Listwise preference losses: K ranked candidates per prompt.

Each variant is a small per-list function of the implicit rewards
z = β·(log π(y|x) − log π_ref(y|x)) and the labels ψ (higher = better),
registered in `_LOSSES`; `listwise_loss` averages the per-list losses over
the informative lists and sums the selected types with weights, as
`dpo_loss` does for pairs.

Axis letters: B lists (prompts), K candidates per list; pairwise arrays are
`_bkk`, indexed [b, i, j]. A candidate is valid where mask_bk is true;
invalid entries may hold anything (NaN, inf) and contribute exactly 0 to the
loss and its gradient. The pairwise arrays make every type O(B·K²).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from rankjax.losses import _common

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _Lists:
  """Per-list inputs shared by every loss type.

  Invalid entries of z and scores are 0, so every intermediate is finite.
  """
  z: Array  # float32[B, K] β·s
  scores: Array  # float32[B, K] ψ, a label (no gradient)
  valid: Array  # bool[B, K]
  target_temperature: float

  @property
  def better_bkk(self) -> Array:
    """[b, i, j]: i and j valid and ψ_i > ψ_j (a strictly ordered pair)."""
    both_bkk = self.valid[:, :, None] & self.valid[:, None, :]
    return both_bkk & (self.scores[:, :, None] > self.scores[:, None, :])

  @property
  def filled(self) -> Array:
    """valid, with every entry of an empty list marked valid.

    An empty list's (discarded) softmaxes then run over its zero fill
    instead of all −inf, which would be NaN in value and gradient.
    """
    return self.valid | ~jnp.any(self.valid, axis=-1, keepdims=True)


def _masked_log_softmax(x_bk: Array, valid_bk: Array) -> Array:
  """log softmax of x over the valid entries; 0 at the others."""
  x_bk = jnp.where(valid_bk, x_bk, -jnp.inf)
  return jnp.where(valid_bk, jax.nn.log_softmax(x_bk, axis=-1), 0.0)


def _plackett_luce(l: _Lists) -> Array:
  """−Σ_i [z_i − log(e^{z_i} + Σ_{j: ψ_j < ψ_i} e^{z_j})] (ListMLE).

  Item i is chosen first among itself and the strictly worse items: ties are
  left unordered and the worst items contribute 0. Without ties this is
  ListMLE over the sorted list; for K = 2 it is sigmoid DPO.
  """
  k = l.z.shape[-1]
  # [b, i, j]: j = i or ψ_j < ψ_i, the items i is chosen before.
  rest_bkk = l.better_bkk | jnp.eye(k, dtype=bool)
  z_bkk = jnp.where(rest_bkk, l.z[:, None, :], -jnp.inf)
  first_bk = l.z - jax.nn.logsumexp(z_bkk, axis=-1)
  return -jnp.sum(jnp.where(l.valid, first_bk, 0.0), axis=-1)


def _lipo_lambda(l: _Lists) -> Array:
  """−Σ_{ψ_i > ψ_j} Δ_ij log σ(z_i − z_j) (LiPO-λ, Liu et al. 2024).

  Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|, G = 2^ψ − 1, D(τ) = log₂(1 + τ),
  τ the 1-based rank of z among the valid items (ties by index). Δ is a
  weight, not a target: τ is detached. G overflows float32 for ψ ≳ 128.
  """
  k = l.z.shape[-1]
  z = jax.lax.stop_gradient(l.z)
  ahead_bkk = (z[:, None, :] > z[:, :, None]) | (
      (z[:, None, :] == z[:, :, None]) & jnp.tri(k, k, -1, dtype=bool))
  tau_bk = 1.0 + jnp.sum(ahead_bkk & l.valid[:, None, :], axis=-1)
  inv_d_bk = 1.0 / jnp.log2(1.0 + tau_bk)
  gain_bk = jnp.exp2(l.scores) - 1.0
  delta_bkk = (jnp.abs(gain_bk[:, :, None] - gain_bk[:, None, :])
               * jnp.abs(inv_d_bk[:, :, None] - inv_d_bk[:, None, :]))
  pair_bkk = delta_bkk * jax.nn.log_sigmoid(l.z[:, :, None] - l.z[:, None, :])
  return -jnp.sum(jnp.where(l.better_bkk, pair_bkk, 0.0), axis=(1, 2))


def _softmax(l: _Lists) -> Array:
  """−Σ_i p_i log softmax(z)_i, p = softmax(ψ/T) (ListNet, Cao et al. 2007).

  T = target_temperature; T = 0 puts uniform mass on the top-scored items,
  which for K = 2 is sigmoid DPO.
  """
  t, filled = l.target_temperature, l.filled
  if t == 0:
    top_bk = filled & (l.scores == jnp.max(
        jnp.where(filled, l.scores, -jnp.inf), axis=-1, keepdims=True))
    p_bk = top_bk / jnp.sum(top_bk, axis=-1, keepdims=True)
  else:
    p_bk = jnp.where(filled, jnp.exp(_masked_log_softmax(l.scores / t, filled)),
                     0.0)
  logq_bk = _masked_log_softmax(l.z, filled)
  return -jnp.sum(jnp.where(l.valid, p_bk * logq_bk, 0.0), axis=-1)


_LOSSES: dict[str, Callable[[_Lists], Array]] = {
    "plackett_luce": _plackett_luce,
    "lipo_lambda": _lipo_lambda,
    "softmax": _softmax,
}
LISTWISE_LOSS_TYPES: tuple[str, ...] = tuple(_LOSSES)


def listwise_loss(
    policy_logps_bk: Array,
    ref_logps_bk: Array | None,
    scores_bk: Array,
    mask_bk: Array | None = None,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "plackett_luce",
    loss_weights: Sequence[float] | None = None,
    target_temperature: float = 1.0,
    reference_free: bool = False,
) -> tuple[Array, dict[str, Array]]:
  """Listwise DPO over K ranked candidates per prompt.

  With z = β·(log π(y|x) − log π_ref(y|x)) per candidate and labels ψ:

    L = Σ_k w_k · mean_{informative b} ℓ_{type_k}(z_b, ψ_b)

  where ℓ is one of LISTWISE_LOSS_TYPES:

    plackett_luce  −Σ_i [z_i − log(e^{z_i} + Σ_{ψ_j<ψ_i} e^{z_j})]
                   (ListMLE, Xia et al. 2008; DPO's Plackett-Luce ranking,
                   Rafailov et al. 2023 App. A.3)
    lipo_lambda    −Σ_{ψ_i>ψ_j} Δ_ij log σ(z_i − z_j)
                   (LiPO-λ, Liu et al. 2024, arXiv 2402.01878)
    softmax        −Σ_i softmax(ψ/T)_i log softmax(z)_i
                   (ListNet, Cao et al. 2007)

  and every sum and softmax runs over the valid candidates. A list is
  informative when it has a valid pair with ψ_i > ψ_j; the others (fewer
  than 2 valid candidates, all tied) are not counted, and the loss is 0 with
  zero gradient when no list is. For K = 2, plackett_luce and softmax with
  T = 0 are sigmoid DPO. reference_free sets log π_ref := 0.

  Args:
    policy_logps_bk: float[B, K] Σ_t log π of each candidate.
    ref_logps_bk: float[B, K] same under the reference (None if
      reference_free).
    scores_bk: float[B, K] labels ψ, higher = better (e.g. rewards).
    mask_bk: bool[B, K] valid candidates (None: all valid).
    beta: β.
    loss_type: a name in LISTWISE_LOSS_TYPES or a sequence of names.
    loss_weights: one weight per loss type (default all 1).
    target_temperature: T of softmax (a Python float; 0 = argmax target).
    reference_free: ignore the reference model (log π_ref := 0).

  Returns:
    (loss, metrics): loss, loss/<type> per type, rewards/mean (mean z over
    valid candidates), rewards/accuracies (fraction of ordered pairs
    ψ_i > ψ_j with z_i > z_j), informative_lists (fraction of lists).
  """
  loss_types, loss_weights = _common.weighted_types(loss_type, loss_weights, _LOSSES, "listwise")
  if not reference_free and ref_logps_bk is None:
    raise ValueError("ref_logps_bk is required unless reference_free=True.")
  if target_temperature < 0:
    raise ValueError(
        f"target_temperature must be >= 0, got {target_temperature}.")
  _common.check_same_shape(
      policy_logps_bk=policy_logps_bk,
      ref_logps_bk=None if reference_free else ref_logps_bk,
      scores_bk=scores_bk,
      mask_bk=mask_bk)
  if jnp.ndim(policy_logps_bk) != 2:
    raise ValueError("policy_logps_bk must be [B, K] (lists x candidates), "
                     f"got shape {jnp.shape(policy_logps_bk)}.")

  f32 = _common.f32
  policy_bk = f32(policy_logps_bk)
  if mask_bk is None:
    valid_bk = jnp.ones(policy_bk.shape, bool)
  else:
    valid_bk = jnp.asarray(mask_bk).astype(bool)
  # Zero the invalid entries before any arithmetic: they may be NaN/inf, and
  # the `where` also routes a zero gradient to them.
  fill = lambda x: jnp.where(valid_bk, f32(x), 0.0)
  s_bk = fill(policy_bk)
  if not reference_free:
    s_bk = s_bk - fill(ref_logps_bk)
  # Labels are targets, not something to differentiate through.
  lists = _Lists(z=beta * s_bk,
                 scores=jax.lax.stop_gradient(fill(scores_bk)),
                 valid=valid_bk, target_temperature=target_temperature)

  better_bkk = lists.better_bkk
  informative_b = jnp.any(better_bkk, axis=(1, 2))
  n_informative = jnp.sum(informative_b)
  metrics = {}
  loss = jnp.zeros((), jnp.float32)
  for name, weight in zip(loss_types, loss_weights):
    per_list_b = jnp.where(informative_b, _LOSSES[name](lists), 0.0)
    term = jnp.sum(per_list_b) / jnp.maximum(n_informative, 1)
    metrics[f"loss/{name}"] = term
    loss = loss + weight * term

  z_bk = jax.lax.stop_gradient(lists.z)
  correct_bkk = z_bk[:, :, None] > z_bk[:, None, :]
  metrics.update({
      "loss": loss,
      "rewards/mean": _common.masked_mean(z_bk, valid_bk),
      "rewards/accuracies": _common.masked_mean(correct_bkk, better_bkk),
      "informative_lists": jnp.mean(informative_b.astype(jnp.float32)),
  })
  return loss, metrics
