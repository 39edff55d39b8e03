"""Direct preference optimisation and its pairwise variants.

DPO: Rafailov et al. 2023, arXiv 2305.18290. Each variant below is a small
per-pair function of the log-ratios s_y = log π(y|x) − log π_ref(y|x),
registered in `_LOSSES`; `dpo_loss` averages the per-pair losses and sums
the selected types with weights. Formulas: see docs/references.md (as
TRL's DPOTrainer computes them). The reference-free family (SimPO, CPO,
ORPO; REFERENCE_FREE_LOSS_TYPES) uses the policy log-probs p_y = log π(y|x)
instead of log-ratios, as TRL's CPOTrainer and ORPOTrainer compute them.

Notation: Δ = s_c − s_r, β the inverse temperature, ε = label_smoothing,
s̄ = s / number of completion tokens, p̄ = p / number of completion tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from rankjax.losses import _common

Array = jax.Array

# TRL's default ε for exo_pair when label_smoothing is 0 (log ε must be finite).
_EXO_DEFAULT_EPS = 1e-3


@dataclasses.dataclass(frozen=True)
class _Pair:
  """Per-pair inputs shared by every loss type (arrays float32[B])."""
  chosen: Array  # s_c
  rejected: Array  # s_r
  chosen_norm: Array | None  # s̄_c, None without lengths
  rejected_norm: Array | None  # s̄_r
  policy_chosen: Array  # p_c = log π(y_c|x), no reference
  policy_rejected: Array  # p_r
  policy_chosen_norm: Array | None  # p̄_c, None without lengths
  policy_rejected_norm: Array | None  # p̄_r
  beta: float
  label_smoothing: float
  discopop_tau: float
  simpo_gamma: float

  @property
  def logits(self) -> Array:
    """βΔ."""
    return self.beta * (self.chosen - self.rejected)


def _smoothed_log_sigmoid(z: Array, eps: float) -> Array:
  """−(1−ε) log σ(z) − ε log σ(−z)."""
  return -(1.0 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)


def _sigmoid(p: _Pair) -> Array:
  """−(1−ε) log σ(βΔ) − ε log σ(−βΔ); ε > 0 is conservative DPO."""
  return _smoothed_log_sigmoid(p.logits, p.label_smoothing)


def _robust(p: _Pair) -> Array:
  """[−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε) (Chowdhury et al. 2024)."""
  eps = p.label_smoothing
  if eps >= 0.5:
    raise ValueError(f"loss_type='robust' needs label_smoothing < 0.5, got {eps}.")
  return (-(1.0 - eps) * jax.nn.log_sigmoid(p.logits)
          + eps * jax.nn.log_sigmoid(-p.logits)) / (1.0 - 2.0 * eps)


def _hinge(p: _Pair) -> Array:
  """max(0, 1 − βΔ) (SLiC, Zhao et al. 2023)."""
  return jax.nn.relu(1.0 - p.logits)


def _ipo(p: _Pair) -> Array:
  """(s̄_c − s̄_r − 1/(2β))² (Azar et al. 2023), on length-normalised s."""
  c, r = _normalized(p, "ipo")
  return jnp.square(c - r - 1.0 / (2.0 * p.beta))


def _exo_pair(p: _Pair) -> Array:
  """σ(βΔ)[log σ(βΔ) − log(1−ε)] + σ(−βΔ)[log σ(−βΔ) − log ε] (Ji et al. 2024).

  ε = 0 would make log ε infinite; as in TRL it then defaults to 1e-3.
  """
  eps = p.label_smoothing or _EXO_DEFAULT_EPS
  z = p.logits
  return (jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-eps))
          + jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - jnp.log(eps)))


def _nca_pair(p: _Pair) -> Array:
  """−log σ(βs_c) − ½ log σ(−βs_c) − ½ log σ(−βs_r) (Chen et al. 2024)."""
  rc, rr = p.beta * p.chosen, p.beta * p.rejected
  return (-jax.nn.log_sigmoid(rc) - 0.5 * jax.nn.log_sigmoid(-rc)
          - 0.5 * jax.nn.log_sigmoid(-rr))


def _bco_pair(p: _Pair) -> Array:
  """−log σ(βs_c) − log σ(−βs_r) (Jung et al. 2024).

  TRL also subtracts a running mean δ of the rewards inside both sigmoids;
  docs/references.md (the spec here) has no δ, so neither does this: add one by
  shifting the log-ratios at the call site if needed.
  """
  return (-jax.nn.log_sigmoid(p.beta * p.chosen)
          - jax.nn.log_sigmoid(-p.beta * p.rejected))


def _sppo_hard(p: _Pair) -> Array:
  """(s_c − 1/(2β))² + (s_r + 1/(2β))² (Wu et al. 2024)."""
  half = 1.0 / (2.0 * p.beta)
  return jnp.square(p.chosen - half) + jnp.square(p.rejected + half)


def _apo_zero(p: _Pair) -> Array:
  """(1 − σ(βs_c)) + σ(βs_r) (D'Oosterlinck et al. 2024)."""
  return (1.0 - jax.nn.sigmoid(p.beta * p.chosen)
          + jax.nn.sigmoid(p.beta * p.rejected))


def _apo_down(p: _Pair) -> Array:
  """σ(βs_c) + (1 − σ(βΔ)) (D'Oosterlinck et al. 2024)."""
  return jax.nn.sigmoid(p.beta * p.chosen) + 1.0 - jax.nn.sigmoid(p.logits)


def _discopop(p: _Pair) -> Array:
  """(1 − m)(−log σ(z)) + m·e^(−z), z = βΔ, m = σ(z/τ) (Chan et al. 2024).

  m·e^(−z) is evaluated as exp(log σ(z/τ) − z): for very negative z the
  naive product is 0·inf = NaN.
  """
  z, tau = p.logits, p.discopop_tau
  return (jax.nn.sigmoid(-z / tau) * -jax.nn.log_sigmoid(z)
          + jnp.exp(jax.nn.log_sigmoid(z / tau) - z))


def _sigmoid_norm(p: _Pair) -> Array:
  """−log σ(β(s̄_c − s̄_r)): sigmoid DPO on length-normalised log-ratios."""
  c, r = _normalized(p, "sigmoid_norm")
  return -jax.nn.log_sigmoid(p.beta * (c - r))


def _simpo(p: _Pair) -> Array:
  """−(1−ε) log σ(x) − ε log σ(−x), x = β(p̄_c − p̄_r) − γ (Meng et al. 2024).

  SimPO, arXiv 2405.14734: reference-free, on per-token policy log-probs,
  with a target margin γ = simpo_gamma (TRL CPOTrainer, loss_type="simpo").
  """
  c, r = _policy_normalized(p, "simpo")
  return _smoothed_log_sigmoid(p.beta * (c - r) - p.simpo_gamma,
                               p.label_smoothing)


def _cpo(p: _Pair) -> Array:
  """−(1−ε) log σ(z) − ε log σ(−z) − p̄_c, z = β(p_c − p_r) (Xu et al. 2024).

  CPO, arXiv 2401.08417: sigmoid DPO on the summed policy log-probs (no
  reference) plus the chosen completion's NLL per token, its behaviour-
  cloning regulariser with weight 1.
  """
  nll_c = -_policy_normalized(p, "cpo")[0]
  z = p.beta * (p.policy_chosen - p.policy_rejected)
  return _smoothed_log_sigmoid(z, p.label_smoothing) + nll_c


def _orpo(p: _Pair) -> Array:
  """−p̄_c − β log σ(log odds_c − log odds_r) (Hong et al. 2024).

  ORPO, arXiv 2403.07691: log odds(y) = p̄ − log(1 − exp(p̄)), β plays ORPO's
  λ (TRL's ORPOConfig.beta). log(1 − exp(p̄)) is `log1m_prob`, which clips
  p̄ below 0 so that a completion of probability 1 stays finite.
  """
  c, r = _policy_normalized(p, "orpo")
  log_odds_c = c - _common.log1m_prob(c)
  log_odds_r = r - _common.log1m_prob(r)
  return -c - p.beta * jax.nn.log_sigmoid(log_odds_c - log_odds_r)


def _normalized(p: _Pair, loss_type: str) -> tuple[Array, Array]:
  return _require_lengths(p.chosen_norm, p.rejected_norm, loss_type)


def _policy_normalized(p: _Pair, loss_type: str) -> tuple[Array, Array]:
  return _require_lengths(p.policy_chosen_norm, p.policy_rejected_norm,
                          loss_type)


def _require_lengths(chosen: Array | None, rejected: Array | None,
                     loss_type: str) -> tuple[Array, Array]:
  if chosen is None or rejected is None:
    raise ValueError(
        f"loss_type={loss_type!r} length-normalises the log-probs: pass "
        "chosen_lengths and rejected_lengths (completion token counts).")
  return chosen, rejected


_LOSSES: dict[str, Callable[[_Pair], Array]] = {
    "sigmoid": _sigmoid,
    "robust": _robust,
    "hinge": _hinge,
    "ipo": _ipo,
    "exo_pair": _exo_pair,
    "nca_pair": _nca_pair,
    "bco_pair": _bco_pair,
    "sppo_hard": _sppo_hard,
    "apo_zero": _apo_zero,
    "apo_down": _apo_down,
    "discopop": _discopop,
    "sigmoid_norm": _sigmoid_norm,
    "simpo": _simpo,
    "cpo": _cpo,
    "orpo": _orpo,
}
DPO_LOSS_TYPES: tuple[str, ...] = tuple(_LOSSES)
# Types that read only the policy log-probs: they need no reference model.
REFERENCE_FREE_LOSS_TYPES: tuple[str, ...] = ("simpo", "cpo", "orpo")


def _per_token(x: Array, lengths: Array) -> Array:
  # A zero-length completion has no tokens; divide by 1 to stay finite.
  return x / jnp.maximum(lengths, 1.0)


def dpo_loss(
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array | None,
    ref_rejected_logps: Array | None,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: Array | None = None,
    rejected_lengths: Array | None = None,
    loss_weights: Sequence[float] | None = None,
    reference_free: bool = False,
    discopop_tau: float = 0.05,
    simpo_gamma: float = 0.5,
    sft_weight: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
  """DPO (Rafailov et al. 2023, arXiv 2305.18290) and its pairwise variants.

  With s_y = log π(y|x) − log π_ref(y|x) (sequence log-probs, float[B]):

    L = Σ_k w_k · mean_b ℓ_{type_k}(s_c, s_r)
        + sft_weight · mean_b (−log π(y_c|x) / |y_c|)

  where ℓ is one of DPO_LOSS_TYPES (see docs/references.md; sigmoid is
  −log σ(βΔ)), weights w default to 1, and the optional SFT term is the
  chosen completion's per-token NLL (RPO). reference_free sets log π_ref := 0.

  The types in REFERENCE_FREE_LOSS_TYPES (simpo, cpo, orpo) read the policy
  log-probs p only, never the reference: when every selected type is one of
  them, ref_chosen_logps and ref_rejected_logps may be None (then treated as
  0 in the reward metrics, as with reference_free).

  Args:
    policy_chosen_logps: float[B] Σ_t log π(y_c,t | ...) of chosen completions.
    policy_rejected_logps: float[B] same for rejected.
    ref_chosen_logps: float[B] reference log-probs (None if reference_free
      or every loss type is in REFERENCE_FREE_LOSS_TYPES).
    ref_rejected_logps: float[B].
    beta: β.
    loss_type: a name in DPO_LOSS_TYPES or a sequence of names.
    label_smoothing: ε for sigmoid, robust, exo_pair, simpo and cpo.
    chosen_lengths: float/int[B] completion token counts; needed by ipo,
      sigmoid_norm, simpo, cpo, orpo and the SFT term.
    rejected_lengths: float/int[B].
    loss_weights: one weight per loss type (default all 1).
    reference_free: ignore the reference model (log π_ref := 0).
    discopop_tau: τ of discopop.
    simpo_gamma: γ, the target reward margin of simpo (TRL's default 0.5).
    sft_weight: weight of the SFT (NLL per chosen token) term.

  Returns:
    (loss, metrics): loss, rewards/chosen, rewards/rejected (mean β·s),
    rewards/margins, rewards/accuracies, logps/chosen, logps/rejected, and
    loss/<type> per type (plus loss/sft when sft_weight ≠ 0).
  """
  loss_types, loss_weights = _common.weighted_types(loss_type, loss_weights, _LOSSES, "DPO")
  needs_ref = not reference_free and any(
      name not in REFERENCE_FREE_LOSS_TYPES for name in loss_types)
  no_ref = ref_chosen_logps is None or ref_rejected_logps is None
  if needs_ref and no_ref:
    raise ValueError(
        "ref_chosen_logps and ref_rejected_logps are required unless "
        "reference_free=True or every loss_type is reference-free "
        f"({', '.join(REFERENCE_FREE_LOSS_TYPES)}); got {loss_types}.")
  if (not reference_free and (ref_chosen_logps is None)
      != (ref_rejected_logps is None)):
    raise ValueError(
        "Pass both ref_chosen_logps and ref_rejected_logps, or neither.")
  # The reference also feeds the reward metrics: without one, log π_ref := 0.
  ignore_ref = reference_free or no_ref
  if (chosen_lengths is None) != (rejected_lengths is None):
    raise ValueError("Pass both chosen_lengths and rejected_lengths, or neither.")
  if sft_weight and chosen_lengths is None:
    raise ValueError("sft_weight > 0 needs chosen_lengths (the SFT term is "
                     "the NLL per chosen token).")
  _common.check_same_shape(
      policy_chosen_logps=policy_chosen_logps,
      policy_rejected_logps=policy_rejected_logps,
      ref_chosen_logps=None if ignore_ref else ref_chosen_logps,
      ref_rejected_logps=None if ignore_ref else ref_rejected_logps,
      chosen_lengths=chosen_lengths,
      rejected_lengths=rejected_lengths)

  f32 = lambda x: jnp.asarray(x).astype(jnp.float32)
  pc, pr = f32(policy_chosen_logps), f32(policy_rejected_logps)
  if ignore_ref:
    rc, rr = jnp.zeros_like(pc), jnp.zeros_like(pr)
  else:
    rc, rr = f32(ref_chosen_logps), f32(ref_rejected_logps)
  s_c, s_r = pc - rc, pr - rr
  if chosen_lengths is None:
    s_c_norm = s_r_norm = p_c_norm = p_r_norm = None
  else:
    lc, lr = f32(chosen_lengths), f32(rejected_lengths)
    s_c_norm, s_r_norm = _per_token(s_c, lc), _per_token(s_r, lr)
    p_c_norm, p_r_norm = _per_token(pc, lc), _per_token(pr, lr)
  pair = _Pair(chosen=s_c, rejected=s_r, chosen_norm=s_c_norm,
               rejected_norm=s_r_norm, policy_chosen=pc, policy_rejected=pr,
               policy_chosen_norm=p_c_norm, policy_rejected_norm=p_r_norm,
               beta=beta, label_smoothing=label_smoothing,
               discopop_tau=discopop_tau, simpo_gamma=simpo_gamma)

  metrics = {}
  loss = jnp.zeros((), jnp.float32)
  for name, weight in zip(loss_types, loss_weights):
    term = jnp.mean(_LOSSES[name](pair))
    metrics[f"loss/{name}"] = term
    loss = loss + weight * term
  if sft_weight:
    sft = jnp.mean(-_per_token(pc, f32(chosen_lengths)))
    metrics["loss/sft"] = sft
    loss = loss + sft_weight * sft

  # Implicit rewards r = β·s on the summed (not length-normalised) log-probs;
  # they are diagnostics only, hence the stop_gradient.
  reward_c = jax.lax.stop_gradient(beta * s_c)
  reward_r = jax.lax.stop_gradient(beta * s_r)
  metrics.update({
      "loss": loss,
      "rewards/chosen": jnp.mean(reward_c),
      "rewards/rejected": jnp.mean(reward_r),
      "rewards/margins": jnp.mean(reward_c - reward_r),
      "rewards/accuracies": jnp.mean((reward_c > reward_r).astype(jnp.float32)),
      "logps/chosen": jnp.mean(jax.lax.stop_gradient(pc)),
      "logps/rejected": jnp.mean(jax.lax.stop_gradient(pr)),
  })
  return loss, metrics
