"""In-graph ranking telemetry for group-sampled RL steps (GRPO, PPO).

Does the policy's own score of its samples (e.g. length-normalised sequence
log-likelihood) rank them as the reward does? The jittable counterpart of
`rankjax.inference._metrics.ranking_diagnostics` (numpy, eval time): the
same Kendall tau-b and tie-averaged linear-gain NDCG, per group, from
pairwise [B, G, G] comparisons (G is small), so no host round trip and no
sort except the one for the ideal DCG.

Axis letters: B groups (prompts), G samples per group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.losses._common import f32

Array = jax.Array


def _mean_where(x_b: Array, defined_b: Array) -> Array:
  """Mean of x over the groups where it is defined; 0.0 when there are none."""
  count = jnp.sum(defined_b.astype(jnp.float32))
  total = jnp.sum(jnp.where(defined_b, x_b, 0.0))
  return total / jnp.maximum(count, 1.0)


def _safe_div(num: Array, den: Array, defined: Array) -> Array:
  # Double `where`: an undefined group gives 0, never NaN/inf.
  return jnp.where(defined, num / jnp.where(defined, den, 1.0), 0.0)


def _pair_sign(x_i: Array, x_j: Array, pair_bgg: Array) -> Array:
  """sgn(x_i − x_j) on valid pairs, else 0: float32[B, G, G].

  From comparisons, not a subtraction, so the ties here are exactly the
  `==` ties that NDCG groups by.
  """
  sign = (x_i > x_j).astype(jnp.float32) - (x_i < x_j).astype(jnp.float32)
  return jnp.where(pair_bgg, sign, 0.0)


def _count_j(x_bgg: Array) -> Array:
  """#{j: x[b, i, j]} as float32[B, G] (exact: counts ≤ G)."""
  return jnp.sum(x_bgg.astype(jnp.float32), axis=-1)


def _discount_cumsum(g: int) -> Array:
  """float32[G + 1]: D[k] = Σ_{p<k} 1 / log2(p + 2), positions 0-based.

  Built in float64 with numpy at trace time (G is static), so the sum of the
  discounts over positions [a, b) is D[b] − D[a] with no float32 drift in
  the running sum.
  """
  disc = 1.0 / np.log2(np.arange(2, g + 2, dtype=np.float64))
  return jnp.asarray(np.concatenate([[0.0], np.cumsum(disc)]), jnp.float32)


def group_ranking_metrics(
    scores_bg: Array,
    rewards_bg: Array,
    mask_bg: Array | None = None,
) -> dict[str, Array]:
  """Per-group agreement between the policy's scores and the rewards.

  Within each group only the valid samples count (masked entries may hold
  NaN or garbage). With sgn_s(i, j) = sgn(s_i − s_j), sgn_r likewise:

    kendall_tau  τ_b = Σ_{i<j} sgn_s sgn_r / sqrt(n_s · n_r), n_s / n_r the
                 pairs not tied in s / r (Kendall 1945; ties allowed).
                 Defined when n_s, n_r > 0: ≥ 2 valid samples, and neither
                 scores nor rewards all equal — the groups where the numpy
                 `kendall_tau` is not NaN ("informative" groups).
    ndcg         DCG / IDCG of ranking by score (descending) against
                 rel_i = r_i − min_valid r ≥ 0, linear gains, discount
                 1 / log2(pos + 2) (Järvelin & Kekäläinen 2002). A tie group
                 of m scores at positions [start, start + m) shares its mean
                 relevance, so sample i adds rel_i · (D[start+m] − D[start]) / m,
                 start_i = #{valid j: s_j > s_i}, m_i = #{valid j: s_j = s_i}.
                 Defined when IDCG > 0 (rewards not all equal).
    top_rank     1 + #{valid j: r_j > r_top} for the top-scored sample (mean
                 over samples tied for the top score); groups with ≥ 1 valid
                 sample. 1 = the policy's favourite has the best reward.
    top_rank_fraction  (top_rank − 1) / (n_valid − 1): the fraction of the
                 group's other samples whose reward beats the favourite's
                 (comparable across G); groups with ≥ 2 valid samples and
                 rewards not all equal. 0 = favourite is best-rewarded; 1 =
                 it is the unique worst (with reward ties the worst
                 reachable value is #{j: r_j > min r} / (n_valid − 1)).
    top_reward   reward of the top-scored sample (mean over ties): in-training
                 best-of-N by the policy's own score; groups with ≥ 1 valid.
    informative  fraction of the B groups where kendall_tau is defined.

  Each metric is a mean over the groups where it is defined and 0.0 (not
  NaN) when there are none; `informative` says how many groups there were.
  Diagnostics only: everything is under stop_gradient. Valid entries are
  assumed finite.

  Args:
    scores_bg: float[B, G] the policy's score of each sample.
    rewards_bg: float[B, G] each sample's reward.
    mask_bg: bool[B, G] valid samples (non-zero = valid); None = all.

  Returns:
    dict of float32 scalars: "ranking/kendall_tau", "ranking/ndcg",
    "ranking/top_rank", "ranking/top_rank_fraction", "ranking/top_reward",
    "ranking/informative".
  """
  if mask_bg is None:
    mask_bg = jnp.ones(jnp.shape(scores_bg), bool)
  shapes = {jnp.shape(scores_bg), jnp.shape(rewards_bg), jnp.shape(mask_bg)}
  if len(shapes) != 1 or jnp.ndim(scores_bg) != 2:
    raise ValueError(
        f"group_ranking_metrics needs equal [B, G] shapes, got scores "
        f"{jnp.shape(scores_bg)}, rewards {jnp.shape(rewards_bg)}, mask "
        f"{jnp.shape(mask_bg)}.")
  num_groups, g = jnp.shape(scores_bg)
  valid_bg = jnp.asarray(mask_bg) != 0
  # Diagnostics must not feed gradients; masked slots are zeroed first so a
  # NaN there cannot reach any sum (0 · NaN would still be NaN).
  s_bg = jnp.where(valid_bg, jax.lax.stop_gradient(f32(scores_bg)), 0.0)
  r_bg = jnp.where(valid_bg, jax.lax.stop_gradient(f32(rewards_bg)), 0.0)

  # Ordered pairs (i, j) of valid samples, axes [B, i, j]. Sums over ordered
  # pairs count each unordered pair twice; the factor cancels in τ_b.
  pair_bgg = valid_bg[:, :, None] & valid_bg[:, None, :]
  s_i, s_j = s_bg[:, :, None], s_bg[:, None, :]
  r_i, r_j = r_bg[:, :, None], r_bg[:, None, :]
  sgn_s = _pair_sign(s_i, s_j, pair_bgg)
  sgn_r = _pair_sign(r_i, r_j, pair_bgg)

  n_valid_b = jnp.sum(valid_bg.astype(jnp.float32), axis=-1)
  n_s_b = jnp.sum(jnp.abs(sgn_s), axis=(1, 2))
  n_r_b = jnp.sum(jnp.abs(sgn_r), axis=(1, 2))
  informative_b = (n_s_b > 0) & (n_r_b > 0)
  tau_b = _safe_div(jnp.sum(sgn_s * sgn_r, axis=(1, 2)),
                    jnp.sqrt(n_s_b * n_r_b), informative_b)

  # NDCG. start_i counts only valid samples above i, so masked slots take no
  # positions; their relevance is 0, so where the sort puts them is moot.
  rel_min_b = jnp.min(jnp.where(valid_bg, r_bg, jnp.inf), axis=-1, keepdims=True)
  rel_bg = jnp.where(valid_bg, r_bg - rel_min_b, 0.0)
  start_bg = _count_j(pair_bgg & (s_j > s_i)).astype(jnp.int32)
  ties_bg = _count_j(pair_bgg & (s_j == s_i)).astype(jnp.int32)  # includes i
  cum_disc = _discount_cumsum(g)
  mean_disc_bg = ((cum_disc[start_bg + ties_bg] - cum_disc[start_bg])
                  / jnp.maximum(ties_bg, 1))
  dcg_b = jnp.sum(jnp.where(valid_bg, rel_bg * mean_disc_bg, 0.0), axis=-1)
  ideal_rel_bg = -jnp.sort(-rel_bg, axis=-1)  # descending
  idcg_b = jnp.sum(ideal_rel_bg * jnp.diff(cum_disc), axis=-1)
  ndcg_defined_b = idcg_b > 0
  ndcg_b = _safe_div(dcg_b, idcg_b, ndcg_defined_b)

  # The policy's favourite(s): valid samples with no valid sample above them.
  top_bg = valid_bg & (start_bg == 0)
  n_top_b = jnp.sum(top_bg.astype(jnp.float32), axis=-1)
  rank_bg = 1.0 + _count_j(pair_bgg & (r_j > r_i))
  nonempty_b = n_valid_b > 0
  top_rank_b = _safe_div(jnp.sum(jnp.where(top_bg, rank_bg, 0.0), axis=-1),
                         n_top_b, nonempty_b)
  top_reward_b = _safe_div(jnp.sum(jnp.where(top_bg, r_bg, 0.0), axis=-1),
                           n_top_b, nonempty_b)
  spread_b = n_r_b > 0  # ≥ 2 valid samples, rewards not all equal
  top_frac_b = _safe_div(top_rank_b - 1.0, n_valid_b - 1.0, spread_b)

  return {
      "ranking/kendall_tau": _mean_where(tau_b, informative_b),
      "ranking/ndcg": _mean_where(ndcg_b, ndcg_defined_b),
      "ranking/top_rank": _mean_where(top_rank_b, nonempty_b),
      "ranking/top_rank_fraction": _mean_where(top_frac_b, spread_b),
      "ranking/top_reward": _mean_where(top_reward_b, nonempty_b),
      "ranking/informative": (jnp.sum(informative_b.astype(jnp.float32))
                              / max(num_groups, 1)),
  }
