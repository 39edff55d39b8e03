"""Evaluation metrics for sampled candidates: pure numpy, no model.

Shapes use the axis legend: P problems, N samples per problem (a row of N
candidates for one prompt). Every function is a pure function of arrays or
lists; `nan` marks a quantity that is undefined for a problem (e.g. a rank
correlation when all N samples are equally correct) and the `mean_*`
helpers skip it.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np

# ---------------------------------------------------------------------------
# pass@k.
# ---------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021,
  arXiv 2107.03374, eq. 1):

      pass@k = 1 − C(n−c, k) / C(n, k)
             = 1 − ∏_{i=n−c+1}^{n} (1 − k / i)

  the probability that a uniformly random size-k subset of the n samples
  holds at least one correct one. The product form never builds the huge
  binomials (the numerically stable form of the paper's code). 1.0 when
  n − c < k (every k-subset holds a correct sample).
  """
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_batch(n, c, k: int) -> np.ndarray:
  """`pass_at_k` for each problem: n, c int arrays [P] (or scalars) -> f64[P].

  Vectorised over problems with the same product, written as a sum of logs:
  1 − exp(Σ_{i=n−c+1}^{n} log(1 − k/i)), the terms past a problem's own
  range masked out.
  """
  n, c = np.broadcast_arrays(np.asarray(n, np.int64), np.asarray(c, np.int64))
  if np.any((c < 0) | (c > n)) or k < 1 or np.any(n < k):
    raise ValueError(f"pass_at_k_batch needs 0 <= c <= n and 1 <= k <= n (k={k})")
  if n.size == 0:
    return np.zeros(n.shape)
  i = np.arange(1, int(n.max()) + 1)                              # [M]
  in_range = (i >= (n - c + 1)[..., None]) & (i <= n[..., None])  # [P, M]
  with np.errstate(divide="ignore"):
    log_terms = np.where(in_range, np.log(np.maximum(1.0 - k / i, 0.0)), 0.0)
  out = 1.0 - np.exp(log_terms.sum(-1))
  return np.where(n - c < k, 1.0, out)


def pass_at_k_curve(correct_pn, ks: Sequence[int] | None = None) -> dict[int, float]:
  """Mean unbiased pass@k over problems for k in `ks` (default 1..N).

  correct_pn: [P, N] correctness (bool or 0/1) of N samples per problem.
  """
  correct_pn = np.asarray(correct_pn) > 0
  p, n = correct_pn.shape
  ks = range(1, n + 1) if ks is None else ks
  c = correct_pn.sum(-1)
  return {int(k): float(pass_at_k_batch(np.full(p, n), c, int(k)).mean()) if p else float("nan")
          for k in ks}


# ---------------------------------------------------------------------------
# Voting.
# ---------------------------------------------------------------------------


def majority_answer(answers: Sequence[Hashable | None],
                    weights: Sequence[float] | None = None) -> Hashable | None:
  """The (weighted) plurality answer: argmax_a Σ_{i: answers_i = a} w_i.

  Self-consistency (Wang et al. 2022, arXiv 2203.11171) with w_i = 1; a
  verifier/reward-weighted vote with w_i = the candidate's score
  (Uesato et al. 2022, arXiv 2211.14275). `None` (no extractable answer)
  never wins; ties go to the answer whose first occurrence comes first, so
  the result is deterministic. Weights must be non-negative. None when no
  candidate has an answer.
  """
  if weights is None:
    weights = [1.0] * len(answers)
  if len(weights) != len(answers):
    raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
  totals: dict[Hashable, float] = {}  # insertion order = first occurrence
  for answer, w in zip(answers, weights):
    if w < 0 or not math.isfinite(w):
      raise ValueError(f"vote weights must be finite and >= 0, got {w}")
    if answer is not None:
      totals[answer] = totals.get(answer, 0.0) + float(w)
  best, best_total = None, -1.0
  for answer, total in totals.items():
    if total > best_total:  # strict: earlier answers win ties
      best, best_total = answer, total
  return best


def maj_at_k(answers_per_problem: Sequence[Sequence[Hashable | None]],
             correct_answers: Sequence[Hashable], k: int) -> float:
  """maj@k: accuracy of the majority answer over each problem's FIRST k
  samples (`majority_answer`); a problem whose vote is None is wrong."""
  return _vote_accuracy(answers_per_problem, None, correct_answers, k)


def weighted_vote_at_k(answers_per_problem: Sequence[Sequence[Hashable | None]],
                       weights_per_problem, correct_answers: Sequence[Hashable],
                       k: int) -> float:
  """Reward-weighted vote@k: like `maj_at_k`, each vote weighted by its
  candidate's non-negative score (e.g. σ(reward) or a verifier's
  probability)."""
  return _vote_accuracy(answers_per_problem, weights_per_problem, correct_answers, k)


def _vote_accuracy(answers_per_problem, weights_per_problem, correct_answers, k) -> float:
  if len(answers_per_problem) != len(correct_answers):
    raise ValueError(f"{len(answers_per_problem)} problems but {len(correct_answers)} answers")
  if not answers_per_problem:
    return float("nan")
  hits = []
  for p, (answers, correct) in enumerate(zip(answers_per_problem, correct_answers)):
    if len(answers) < k:
      raise ValueError(f"problem {p} has {len(answers)} samples, fewer than k={k}")
    weights = None if weights_per_problem is None else list(weights_per_problem[p])[:k]
    voted = majority_answer(list(answers)[:k], weights)
    hits.append(voted is not None and voted == correct)
  return float(np.mean(hits))


# ---------------------------------------------------------------------------
# Best-of-n.
# ---------------------------------------------------------------------------


def best_of_n_expected(scores_n, correct_n, n: int) -> float:
  """E[correctness of the top-scored candidate of a uniformly random size-n
  subset of the N samples] — exact, no resampling.

  Group the samples by distinct score, best first: level j holds m_j samples,
  c_j of them correct, and a_j samples score strictly higher. The subset's
  best level is j with probability [C(N−a_j, n) − C(N−a_j−m_j, n)] / C(N, n);
  given that, the pick is uniform over the subset's members of level j (ties
  broken at random), which by symmetry is correct with probability c_j / m_j:

      E = Σ_j (c_j / m_j) · [C(N−a_j, n) − C(N−a_j−m_j, n)] / C(N, n).

  n = N is plain best-of-N over all samples (ties averaged). NaN scores rank
  last.
  """
  scores = np.nan_to_num(np.asarray(scores_n, np.float64), nan=-np.inf)
  correct = np.asarray(correct_n, np.float64)
  total = scores.shape[0]
  if not 1 <= n <= total:
    raise ValueError(f"best-of-n needs 1 <= n <= N={total}, got n={n}")
  denom = math.comb(total, n)
  levels, inverse = np.unique(-scores, return_inverse=True)  # ascending -score = best first
  expected, above = 0.0, 0
  for j in range(len(levels)):
    members = inverse == j
    m = int(members.sum())
    p_top = (math.comb(total - above, n) - math.comb(total - above - m, n)) / denom
    expected += p_top * correct[members].mean()
    above += m
  return float(expected)


def best_of_n_curve(scores_pn, correct_pn, ns: Sequence[int]) -> dict[int, float]:
  """Expected best-of-n accuracy for each n in `ns`, averaged over problems:
  the exact expectation over random size-n subsets (`best_of_n_expected`).

  scores_pn: [P, N] ranking scores (higher = preferred: log-likelihood,
  reward, verifier score). correct_pn: [P, N] 0/1 correctness.
  """
  scores_pn, correct_pn = np.asarray(scores_pn), np.asarray(correct_pn)
  if scores_pn.shape != correct_pn.shape or scores_pn.ndim != 2:
    raise ValueError(f"scores {scores_pn.shape} and correct {correct_pn.shape} must be [P, N]")
  return {int(n): float(np.mean([best_of_n_expected(s, c, int(n))
                                 for s, c in zip(scores_pn, correct_pn)]))
                  if len(scores_pn) else float("nan") for n in ns}


def soft_best_of_n_expected(rewards_pn, correct_pn, beta: float) -> float:
  """Expected accuracy of soft best-of-N: per problem, one of its N samples
  resampled with self-normalised importance weights

      w_i = exp(r_i / β) / Σ_j exp(r_j / β)

  (sampling-importance-resampling toward π·exp(r/β) from N samples of π:
  the target a KL-regularised objective at the same β tilts toward; Korbak
  et al. 2022, arXiv 2205.11275), so E = mean_p Σ_i w_i c_i exactly, no
  resampling noise. β → ∞ gives pass@1, β → 0 hard best-of-N with ties
  averaged; β = 0 computes that limit. NaN rewards get weight 0 (a problem
  whose rewards are all NaN counts its mean correctness).

  rewards_pn, correct_pn: [P, N].
  """
  r = np.asarray(rewards_pn, np.float64)
  c = np.asarray(correct_pn, np.float64)
  if r.shape != c.shape or r.ndim != 2:
    raise ValueError(f"rewards {r.shape} and correct {c.shape} must be [P, N]")
  if beta < 0:
    raise ValueError(f"soft best-of-n needs beta >= 0, got {beta}")
  if r.shape[0] == 0:
    return float("nan")
  ok = ~np.isnan(r)
  if beta == 0:
    top = np.where(ok, r, -np.inf).max(axis=1, keepdims=True)
    w = (ok & (r == top)).astype(np.float64)
  else:
    z = np.where(ok, r / beta, -np.inf)
    z = z - np.where(ok.any(1, keepdims=True), z.max(axis=1, keepdims=True), 0.0)
    w = np.where(ok, np.exp(z), 0.0)
  w = np.where(w.sum(1, keepdims=True) > 0, w, 1.0)
  return float(np.mean((w * c).sum(1) / w.sum(1)))


# ---------------------------------------------------------------------------
# Ranking diagnostics: does the model's likelihood ranking agree with the
# verifier's / reward model's?
# ---------------------------------------------------------------------------


def kendall_tau(a, b) -> float:
  """Kendall's tau-b between two score vectors (ties allowed):

      τ_b = Σ_{i<j} sgn(a_i − a_j) sgn(b_i − b_j)
            / sqrt((n₀ − n₁)(n₀ − n₂))

  n₀ = n(n−1)/2 pairs, n₁ / n₂ the pairs tied in a / b (Kendall 1945; what
  `scipy.stats.kendalltau` computes by default). NaN when either vector is
  constant (the ranking says nothing).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"kendall_tau needs two vectors of one length, got {a.shape}, {b.shape}")
  upper = np.triu(np.ones((a.size, a.size), bool), k=1)
  sa = np.sign(a[:, None] - a[None, :])[upper]
  sb = np.sign(b[:, None] - b[None, :])[upper]
  denom = math.sqrt(float(np.sum(sa != 0)) * float(np.sum(sb != 0)))
  return float(np.sum(sa * sb) / denom) if denom > 0 else float("nan")


def ndcg(scores_model, relevance, k: int | None = None) -> float:
  """Normalised discounted cumulative gain of ranking by `scores_model`
  (descending) against graded `relevance` (Järvelin & Kekäläinen 2002):

      DCG@k = Σ_{r=1}^{k} rel_(r) / log₂(r + 1),   NDCG@k = DCG@k / IDCG@k

  with linear gains (sklearn's `ndcg_score` convention; for 0/1 relevance
  it equals the 2^rel − 1 form). Tied model scores get the mean relevance
  of their tie group at each of the group's positions, so the value does
  not depend on the input order. NaN when IDCG = 0 (nothing relevant).
  Relevance must be non-negative.
  """
  s = np.asarray(scores_model, np.float64)
  rel = np.asarray(relevance, np.float64)
  if s.shape != rel.shape or s.ndim != 1:
    raise ValueError(f"ndcg needs two vectors of one length, got {s.shape}, {rel.shape}")
  if np.any(rel < 0):
    raise ValueError("ndcg relevance must be >= 0")
  k = s.size if k is None else min(int(k), s.size)
  discount = np.zeros(s.size)
  discount[:k] = 1.0 / np.log2(np.arange(2, k + 2))
  ideal = float(np.sort(rel)[::-1] @ discount)
  if ideal <= 0:
    return float("nan")
  s = np.nan_to_num(s, nan=-np.inf)
  levels, inverse = np.unique(-s, return_inverse=True)
  dcg, start = 0.0, 0
  for j in range(len(levels)):
    members = inverse == j
    m = int(members.sum())
    dcg += rel[members].mean() * discount[start:start + m].sum()
    start += m
  return float(dcg / ideal)


def ranking_diagnostics(scores_pn, relevance_pn, k: int | None = None) -> dict[str, float]:
  """Mean per-prompt agreement between a model ranking and a reference one.

  scores_pn: [P, N] the model's scores (e.g. length-normalised
  log-likelihood); relevance_pn: [P, N] the verifier's / reward model's
  (non-negative for NDCG). Returns `kendall_tau` and `ndcg` (means over the
  prompts where they are defined) and `rank_informative`, the fraction of
  prompts whose reference scores are not all equal (the others cannot rank).
  """
  scores_pn, relevance_pn = np.asarray(scores_pn), np.asarray(relevance_pn)
  if scores_pn.shape != relevance_pn.shape or scores_pn.ndim != 2:
    raise ValueError(f"scores {scores_pn.shape} and relevance {relevance_pn.shape} "
                     "must be [P, N]")
  informative = [np.ptp(r) > 0 for r in relevance_pn] if len(relevance_pn) else []
  taus = [kendall_tau(s, r) for s, r, i in zip(scores_pn, relevance_pn, informative) if i]
  ndcgs = [ndcg(s, r, k) for s, r, i in zip(scores_pn, relevance_pn, informative) if i]
  return {"kendall_tau": nanmean(taus), "ndcg": nanmean(ndcgs),
          "rank_informative": float(np.mean(informative)) if informative else float("nan")}


def nanmean(values: Sequence[float]) -> float:
  """Mean of the finite values; NaN if there are none (no warning)."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return float(v.mean()) if v.size else float("nan")


# ---------------------------------------------------------------------------
# DPO implicit reward.
# ---------------------------------------------------------------------------


def implicit_reward_accuracy(policy_chosen, policy_rejected, ref_chosen,
                             ref_rejected) -> float:
  """Held-out pairwise accuracy of the DPO implicit reward (Rafailov et al.
  2023, arXiv 2305.18290): r(x, y) = β (log π(y|x) − log π_ref(y|x)), so

      acc = mean[ (π_c − ref_c) > (π_r − ref_r) ]

  over pairs of summed completion log-probs (β > 0 does not change the
  sign). Ties count as wrong, as TRL's `rewards/accuracies` does. For the
  reference-free variant pass zeros as the reference log-probs.
  """
  pc, pr, rc, rr = (np.asarray(x, np.float64) for x in
                    (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
  if not pc.shape == pr.shape == rc.shape == rr.shape:
    raise ValueError("implicit_reward_accuracy: all four arrays must have one shape")
  if pc.size == 0:
    return float("nan")
  return float(np.mean((pc - rc) > (pr - rr)))


def as_float(x: Any) -> float | None:
  """A float for JSON: NaN and infinities become None."""
  x = float(x)
  return x if math.isfinite(x) else None
