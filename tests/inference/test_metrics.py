"""Metrics: pass@k vs exact enumeration, voting, best-of-n expectation,
Kendall τ vs scipy, NDCG by hand, DPO implicit-reward accuracy."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from rankjax import inference as I


def _pass_at_k_brute(n, c, k):
  correct = [1] * c + [0] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_matches_enumeration(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      want = _pass_at_k_brute(n, c, k)
      assert I.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
      assert I.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_batch_matches_scalar_and_is_stable():
  rng = np.random.default_rng(0)
  n = rng.integers(1, 12, 50)
  c = rng.integers(0, n + 1)
  k = 1
  np.testing.assert_allclose(I.pass_at_k_batch(n, c, k), [I.pass_at_k(a, b, k) for a, b in zip(n, c)])
  n2 = np.full(40, 11)
  c2 = rng.integers(0, 12, 40)
  np.testing.assert_allclose(I.pass_at_k_batch(n2, c2, 4), [I.pass_at_k(11, b, 4) for b in c2],
                             atol=1e-12)
  # Large n: the product form stays finite where C(n, k) overflows floats.
  big = I.pass_at_k(2000, 3, 500)
  assert big == pytest.approx(1 - math.comb(1997, 500) / math.comb(2000, 500))
  with pytest.raises(ValueError):
    I.pass_at_k(3, 4, 1)
  with pytest.raises(ValueError):
    I.pass_at_k(3, 1, 4)


def test_pass_at_k_curve():
  correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]])
  curve = I.pass_at_k_curve(correct)
  assert list(curve) == [1, 2, 3, 4]
  assert curve[1] == pytest.approx((0.25 + 0 + 0.75) / 3)
  assert curve[4] == pytest.approx(2 / 3)
  want2 = (_pass_at_k_brute(4, 1, 2) + 0 + _pass_at_k_brute(4, 3, 2)) / 3
  assert curve[2] == pytest.approx(want2)


def test_majority_answer_ties_and_none():
  assert I.majority_answer(["3", "4", "4", "3"]) == "3"       # tie -> first seen
  assert I.majority_answer([None, None, "5"]) == "5"          # None never wins
  assert I.majority_answer([None, None]) is None
  assert I.majority_answer([]) is None
  assert I.majority_answer(["a", "b", "b"], weights=[3.0, 1.0, 1.0]) == "a"
  assert I.majority_answer(["a", "b", "b"], weights=[2.0, 1.0, 1.0]) == "a"  # tie
  with pytest.raises(ValueError):
    I.majority_answer(["a"], weights=[-1.0])


def test_maj_at_k_and_weighted_vote_on_fixed_samples():
  answers = [["1", "2", "2", "1", "1"],
             [None, "7", None, "8", "8"],
             ["5", None, "6", "6", "6"]]
  correct = ["1", "7", "5"]
  # k=3: votes 2, 7, 5 -> 2/3 right. k=5: 1, 8, 6 -> 1/3.
  assert I.maj_at_k(answers, correct, 3) == pytest.approx(2 / 3)
  assert I.maj_at_k(answers, correct, 5) == pytest.approx(1 / 3)
  assert I.maj_at_k(answers, correct, 1) == pytest.approx(2 / 3)
  weights = [[5, 1, 1, 0, 0], [0, 3, 0, 1, 1], [0, 0, 1, 1, 1]]
  assert I.weighted_vote_at_k(answers, weights, correct, 5) == pytest.approx(2 / 3)
  with pytest.raises(ValueError):
    I.maj_at_k(answers, correct, 6)


def _best_of_n_brute(scores, correct, n):
  total = 0.0
  subsets = list(itertools.combinations(range(len(scores)), n))
  for s in subsets:
    top = max(scores[i] for i in s)
    tied = [i for i in s if scores[i] == top]
    total += np.mean([correct[i] for i in tied])
  return total / len(subsets)


def test_best_of_n_expected_matches_enumeration_with_ties():
  rng = np.random.default_rng(1)
  for _ in range(20):
    n_samples = int(rng.integers(1, 7))
    scores = rng.integers(0, 3, n_samples).astype(float)  # many ties
    correct = rng.integers(0, 2, n_samples)
    for n in range(1, n_samples + 1):
      assert I.best_of_n_expected(scores, correct, n) == pytest.approx(
          _best_of_n_brute(scores, correct, n), abs=1e-12)


def test_best_of_n_curve_and_selection():
  scores = np.array([[0.1, 0.9, 0.5], [2.0, 1.0, 0.0]])
  correct = np.array([[0, 1, 0], [0, 1, 1]])
  curve = I.best_of_n_curve(scores, correct, [1, 3])
  assert curve[1] == pytest.approx((1 / 3 + 2 / 3) / 2)   # n=1: mean accuracy
  assert curve[3] == pytest.approx(0.5)                   # top picks: right, wrong
  candidates = [["a", "b", "c"], ["d", "e", "f"]]
  assert I.best_of_n(candidates, scores) == ["b", "d"]
  assert I.best_of_n([["x", "y"]], [[1.0, 1.0]]) == ["x"]   # first on ties
  assert I.best_of_n([["x", "y"]], [[float("nan"), -5.0]]) == ["y"]
  assert I.majority_vote([["1", "2", "2"], [None, "3"]]) == ["2", "3"]
  assert I.weighted_vote([["1", "2", "2"]], [[0.9, 0.2, 0.3]]) == ["1"]


def test_kendall_tau_matches_scipy():
  rng = np.random.default_rng(2)
  for size in (2, 3, 5, 8, 13):
    for _ in range(5):
      a = rng.integers(0, 4, size).astype(float)
      b = rng.normal(size=size) if rng.random() < 0.5 else rng.integers(0, 2, size)
      want = scipy.stats.kendalltau(a, b).statistic
      got = I.kendall_tau(a, b)
      if np.isnan(want):
        assert np.isnan(got)
      else:
        assert got == pytest.approx(want, abs=1e-12)
  assert I.kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
  assert I.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert np.isnan(I.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_ndcg_hand_computed():
  # Model order: c (0.9), a (0.5), b (0.1); relevance a=3, b=2, c=0.
  scores, rel = [0.5, 0.1, 0.9], [3, 2, 0]
  dcg = 0 / math.log2(2) + 3 / math.log2(3) + 2 / math.log2(4)
  idcg = 3 / math.log2(2) + 2 / math.log2(3) + 0 / math.log2(4)
  assert I.ndcg(scores, rel) == pytest.approx(dcg / idcg)
  # @2: only the first two positions count.
  assert I.ndcg(scores, rel, k=2) == pytest.approx((3 / math.log2(3)) / (3 + 2 / math.log2(3)))
  assert I.ndcg([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)
  assert np.isnan(I.ndcg([1, 2], [0, 0]))
  # A tie between a relevant and an irrelevant sample at the top: mean gain
  # 0.5 at positions 1 and 2.
  want = 0.5 * (1 + 1 / math.log2(3)) / 1.0
  assert I.ndcg([1.0, 1.0, 0.0], [1, 0, 0]) == pytest.approx(want)
  assert I.ndcg([1.0, 1.0, 0.0], [0, 1, 0]) == pytest.approx(want)


def test_ranking_diagnostics_skips_uninformative_prompts():
  scores = np.array([[0.1, 0.2, 0.3], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
  rel = np.array([[0, 0, 1], [0, 0, 1], [1, 1, 1]])   # last prompt cannot rank
  d = I.ranking_diagnostics(scores, rel)
  tau0, tau1 = I.kendall_tau(scores[0], rel[0]), I.kendall_tau(scores[1], rel[1])
  assert d["kendall_tau"] == pytest.approx((tau0 + tau1) / 2)
  assert d["ndcg"] == pytest.approx((1.0 + 1 / math.log2(4)) / 2)
  assert d["rank_informative"] == pytest.approx(2 / 3)


def test_implicit_reward_accuracy():
  pc = np.array([-1.0, -2.0, -3.0, -1.0])
  pr = np.array([-2.0, -1.0, -3.0, -1.0])
  rc = np.array([-1.0, -1.0, -1.0, -2.0])
  rr = np.array([-1.0, -1.0, -1.0, -1.0])
  # margins (pc-rc)-(pr-rr): 1, -1, -2, 1 -> 2 of 4 positive.
  assert I.implicit_reward_accuracy(pc, pr, rc, rr) == pytest.approx(0.5)
  z = np.zeros(4)
  assert I.implicit_reward_accuracy(pc, pr, z, z) == pytest.approx(0.25)  # ties are wrong
