"""group_ranking_metrics against the numpy eval metrics, per group."""

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import losses
from rankjax.inference import _metrics
from losses_golden import assert_close, assert_finite_tree

# Jitted once: eager dispatch of the ~60 small ops costs more than compiling.
ranking_metrics = jax.jit(losses.group_ranking_metrics)
KEYS = ("kendall_tau", "ndcg", "top_rank", "top_rank_fraction", "top_reward",
        "informative")


def _reference(scores_bg, rewards_bg, mask_bg):
  """The metrics from `_metrics.kendall_tau` / `ndcg` on each group's valid
  samples, top rank/reward written out; means skip undefined (NaN) groups
  and are 0 when none is defined."""
  per_group = {k: [] for k in KEYS}
  for s, r, m in zip(scores_bg, rewards_bg, mask_bg):
    s, r = np.asarray(s, np.float64)[m], np.asarray(r, np.float64)[m]
    n, nan = s.size, float("nan")
    tau = _metrics.kendall_tau(s, r) if n else nan
    per_group["kendall_tau"].append(tau)
    per_group["informative"].append(float(np.isfinite(tau)))
    per_group["ndcg"].append(_metrics.ndcg(s, r - r.min()) if n else nan)
    if n == 0:
      for k in ("top_rank", "top_rank_fraction", "top_reward"):
        per_group[k].append(nan)
      continue
    top = s == s.max()
    rank = np.mean([1 + np.sum(r > r_top) for r_top in r[top]])
    per_group["top_rank"].append(rank)
    per_group["top_reward"].append(r[top].mean())
    spread = n >= 2 and np.ptp(r) > 0
    per_group["top_rank_fraction"].append((rank - 1) / (n - 1) if spread else nan)
  out = {k: _metrics.nanmean(v) for k, v in per_group.items()}
  out["informative"] = float(np.mean(per_group["informative"]))
  return {f"ranking/{k}": 0.0 if np.isnan(v) else v for k, v in out.items()}


def _check(scores_bg, rewards_bg, mask_bg=None):
  got = ranking_metrics(scores_bg, rewards_bg, mask_bg)
  mask = np.ones(np.shape(scores_bg), bool) if mask_bg is None else mask_bg
  expected = _reference(scores_bg, rewards_bg, np.asarray(mask, bool))
  assert set(got) == set(expected)
  for k, v in got.items():
    assert v.dtype == jnp.float32 and v.shape == (), k
    assert_close(v, expected[k], rtol=1e-5, atol=1e-5)
  return got


def test_matches_numpy_on_random_groups_with_ties_and_masks():
  rng = np.random.default_rng(0)
  for g in (1, 2, 3, 5, 8, 64):
    b = 64
    # Few distinct integer values: many ties in both scores and rewards.
    scores = rng.integers(-2, 3, (b, g)).astype(np.float32)
    rewards = rng.integers(0, 4, (b, g)).astype(np.float32) - 1.5
    mask = rng.random((b, g)) < 0.75
    mask[0] = False           # an all-masked group
    mask[1] = np.arange(g) == 0  # a single valid sample
    got = _check(scores, rewards, mask)
    if g >= 5:
      assert 0 < got["ranking/informative"] < 1


def test_matches_numpy_with_continuous_scores_and_no_mask():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(32, 8)).astype(np.float32)
  rewards = rng.normal(size=(32, 8)).astype(np.float32)
  _check(scores, rewards)


def test_binary_rewards():
  rng = np.random.default_rng(2)
  scores = rng.integers(0, 4, (48, 8)).astype(np.float32)
  rewards = (rng.random((48, 8)) < 0.3).astype(np.float32)
  rewards[0] = 1.0  # all correct: no ranking signal
  mask = rng.random((48, 8)) < 0.9
  got = _check(scores, rewards, mask)
  # With 0/1 rewards and a 0 in the group, relevance is the reward itself.
  s, r = scores[2][mask[2]], rewards[2][mask[2]]
  if r.min() == 0 and r.max() == 1:
    assert _metrics.ndcg(s, r) == _metrics.ndcg(s, r - r.min())
  assert 0 < got["ranking/informative"] < 1


def test_all_masked_and_single_sample_give_finite_zeros():
  for scores, rewards, mask in [
      (np.zeros((3, 4)), np.ones((3, 4)), np.zeros((3, 4), bool)),
      (np.full((3, 1), 2.0), np.full((3, 1), 5.0), None),
      (np.zeros((0, 4)), np.zeros((0, 4)), None),
  ]:
    got = ranking_metrics(scores, rewards, mask)
    assert_finite_tree(got)
    assert float(got["ranking/informative"]) == 0.0
    for k in ("kendall_tau", "ndcg", "top_rank_fraction"):
      assert float(got[f"ranking/{k}"]) == 0.0
  one = ranking_metrics(np.full((3, 1), 2.0), np.full((3, 1), 5.0))
  assert float(one["ranking/top_rank"]) == 1.0
  assert float(one["ranking/top_reward"]) == 5.0


def test_masked_nan_entries_are_ignored():
  rng = np.random.default_rng(3)
  scores = rng.integers(0, 3, (16, 6)).astype(np.float32)
  rewards = rng.integers(0, 3, (16, 6)).astype(np.float32)
  mask = rng.random((16, 6)) < 0.7
  clean = ranking_metrics(scores, rewards, mask)
  noisy_s = np.where(mask, scores, np.nan).astype(np.float32)
  noisy_r = np.where(mask, rewards, np.inf).astype(np.float32)
  got = _check(noisy_s, noisy_r, mask)
  assert_finite_tree(got)
  for k in got:
    assert float(got[k]) == float(clean[k]), k


def test_top_rank_and_top_reward_by_hand():
  scores = np.array([[3.0, 1.0, 2.0, 0.0],     # favourite has the best reward
                     [0.0, 5.0, 1.0, 2.0],     # favourite is the worst
                     [4.0, 4.0, 1.0, 0.0],     # two favourites, ranks 2 and 3
                     [9.0, 1.0, 2.0, 0.0]],    # favourite masked out
                    np.float32)
  rewards = np.array([[1.0, 0.0, 0.5, 0.2],
                      [1.0, 0.0, 0.5, 0.2],
                      [0.5, 0.2, 1.0, 0.0],
                      [0.0, 0.3, 0.7, 0.1]], np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]], bool)
  got = ranking_metrics(scores, rewards, mask)
  # Per group: top_rank 1, 4, (2 + 3)/2, 1; top_reward 1, 0, (0.5 + 0.2)/2, 0.7.
  assert_close(got["ranking/top_rank"], (1 + 4 + 2.5 + 1) / 4)
  assert_close(got["ranking/top_reward"], (1 + 0 + 0.35 + 0.7) / 4)
  # Fractions: 0/3, 3/3, 1.5/3, 0/2.
  assert_close(got["ranking/top_rank_fraction"], (0 + 1 + 0.5 + 0) / 4)
  _check(scores, rewards, mask)


def test_perfect_and_reversed_order():
  rewards = np.array([[0.0, 1.0, 2.0, 3.0]] * 2, np.float32)
  scores = np.stack([rewards[0], -rewards[0]])
  per = [ranking_metrics(scores[i:i + 1], rewards[i:i + 1])
         for i in range(2)]
  assert_close(per[0]["ranking/kendall_tau"], 1.0)
  assert_close(per[0]["ranking/ndcg"], 1.0)
  assert_close(per[1]["ranking/kendall_tau"], -1.0)
  assert_close(per[1]["ranking/top_rank_fraction"], 1.0)


def test_no_gradient_flows():
  rng = np.random.default_rng(4)
  scores = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  rewards = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)

  def total(s):
    return sum(jax.tree_util.tree_leaves(
        losses.group_ranking_metrics(s, rewards)))

  grad = jax.jit(jax.grad(total))(scores)
  assert np.all(np.asarray(grad) == 0.0)
