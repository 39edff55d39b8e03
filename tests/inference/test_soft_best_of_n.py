"""Soft best-of-N: the exact expectation against hand-computed values and its
limits (pass@1, hard best-of-N), the draws against softmax(r/β), the
summary's pass gap and soft best-of-k, the training reward `collect` fills,
and the ranking-curve plot."""

import json
import math

import jax
import numpy as np
import pytest

from rankjax import config as config_lib
from rankjax import inference as I
from rankjax import rewards
from rankjax import run as run_lib
from rankjax import testing
from rankjax.data import tasks
from rankjax.inference import _plots
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")

# Correct samples carry the higher rewards (row 0: the top two; row 1: the
# two tied best; row 2: none correct; row 3: the single best).
REWARDS = np.array([[0.1, 0.5, 2.0, 3.0], [1.0, 1.0, 0.0, -1.0],
                    [0.3, 0.2, 0.1, 0.0], [0.0, 0.0, 0.0, 0.5]])
CORRECT = np.array([[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], float)


# -- soft_best_of_n_expected -------------------------------------------------


def test_expected_golden_values():
  # Row 0: w ∝ (1, 3, 4) at β = 1, only the middle is correct: 3/8.
  # Row 1: all rewards tie, one of three correct: 1/3 at any β.
  rewards_pn = np.array([[0.0, math.log(3), math.log(4)], [2.0, 2.0, 2.0]])
  correct_pn = np.array([[0, 1, 0], [1, 0, 0]], float)
  assert I.soft_best_of_n_expected(rewards_pn, correct_pn, 1.0) == pytest.approx(
      (3 / 8 + 1 / 3) / 2, abs=1e-12)
  # β = 2: w ∝ (1, √3, 2).
  assert I.soft_best_of_n_expected(rewards_pn, correct_pn, 2.0) == pytest.approx(
      (math.sqrt(3) / (3 + math.sqrt(3)) + 1 / 3) / 2, abs=1e-12)
  # β = 0: the top reward (ties averaged): row 0 picks the wrong sample.
  assert I.soft_best_of_n_expected(rewards_pn, correct_pn, 0.0) == pytest.approx(
      (0.0 + 1 / 3) / 2, abs=1e-12)
  # Bool correctness and nested lists are accepted.
  assert I.soft_best_of_n_expected([[0.0, 1.0]], [[False, True]], 1.0) == pytest.approx(
      math.e / (1 + math.e), abs=1e-12)


def test_expected_is_stable_for_large_rewards():
  # exp(1000 / 0.5) overflows float64: the max is subtracted first.
  got = I.soft_best_of_n_expected([[1000.0, 999.0]], [[1, 0]], 0.5)
  assert got == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-12)
  assert I.soft_best_of_n_expected([[-1000.0, -1001.0]], [[0, 1]], 1.0) == pytest.approx(
      1 / (1 + math.e), abs=1e-12)


def test_expected_limits():
  pass_at_1 = float(np.mean(CORRECT))
  assert I.soft_best_of_n_expected(REWARDS, CORRECT, 1e12) == pytest.approx(pass_at_1, abs=1e-9)
  n = REWARDS.shape[1]
  hard = np.mean([I.best_of_n_expected(r, c, n) for r, c in zip(REWARDS, CORRECT)])
  assert hard == pytest.approx(I.best_of_n_curve(REWARDS, CORRECT, [n])[n])
  assert I.soft_best_of_n_expected(REWARDS, CORRECT, 0.0) == pytest.approx(hard, abs=1e-12)
  # β → 0 approaches the β = 0 value continuously.
  assert I.soft_best_of_n_expected(REWARDS, CORRECT, 1e-3) == pytest.approx(hard, abs=1e-9)


def test_expected_is_monotone_when_reward_orders_correctness():
  """With every correct sample rewarded above every wrong one (per row),
  raising β only moves weight toward wrong samples: E falls from hard
  best-of-N (β = 0) to pass@1 (β → ∞)."""
  betas = [0.0, 0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1e6]
  values = [I.soft_best_of_n_expected(REWARDS, CORRECT, b) for b in betas]
  assert all(a >= b - 1e-12 for a, b in zip(values, values[1:])), values
  assert values[0] > values[-1] + 0.2   # not flat
  assert values[-1] == pytest.approx(np.mean(CORRECT), abs=1e-5)


def test_expected_nan_rewards_weigh_zero():
  # The NaN sample is the only correct one: it is never resampled.
  assert I.soft_best_of_n_expected([[NAN, 0.0, 1.0]], [[1, 0, 0]], 1.0) == 0.0
  assert I.soft_best_of_n_expected([[NAN, 0.0, 1.0]], [[0, 0, 1]], 1.0) == pytest.approx(
      math.e / (1 + math.e), abs=1e-12)
  assert I.soft_best_of_n_expected([[NAN, 0.0, 1.0]], [[1, 0, 1]], 0.0) == 1.0
  # All NaN: the row counts its mean correctness, at any β.
  for beta in (0.0, 0.7):
    got = I.soft_best_of_n_expected([[NAN, NAN, NAN, NAN], [0.0, 1.0, 2.0, 3.0]],
                                    [[1, 0, 0, 0], [0, 0, 0, 1]], beta)
    want_row1 = 1.0 if beta == 0 else np.exp(3 / beta) / np.exp(np.arange(4) / beta).sum()
    assert got == pytest.approx((0.25 + want_row1) / 2, abs=1e-12), beta
  assert np.isfinite(I.soft_best_of_n_expected([[NAN, NAN]], [[0, 1]], 0.0))


def test_expected_errors():
  with pytest.raises(ValueError, match="beta >= 0"):
    I.soft_best_of_n_expected(REWARDS, CORRECT, -0.1)
  with pytest.raises(ValueError, match="must be"):
    I.soft_best_of_n_expected(REWARDS, CORRECT[:, :3], 1.0)
  with pytest.raises(ValueError, match="must be"):
    I.soft_best_of_n_expected(REWARDS[0], CORRECT[0], 1.0)   # not [P, N]
  assert math.isnan(I.soft_best_of_n_expected(np.zeros((0, 3)), np.zeros((0, 3)), 1.0))


# -- soft_best_of_n (draws) --------------------------------------------------


def test_draw_frequencies_match_softmax_over_seeds():
  beta, seeds = 0.5, 3000
  row = [0.0, 0.5 * math.log(2), 0.5 * math.log(5)]   # softmax(row / β) = (1, 2, 5) / 8
  want = np.array([1, 2, 5]) / 8
  picks = [I.soft_best_of_n([["a", "b", "c"]], [row], beta=beta, rng=s)[0]
           for s in range(seeds)]
  freq = np.array([picks.count(c) for c in "abc"]) / seeds
  sigma = np.sqrt(want * (1 - want) / seeds)
  assert np.all(np.abs(freq - want) < 5 * sigma), (freq, want)
  # The exact expectation is the mean correctness of the draws ("c" correct).
  expected = I.soft_best_of_n_expected([row], [[0, 0, 1]], beta)
  assert expected == pytest.approx(5 / 8, abs=1e-12)
  assert abs(freq[2] - expected) < 5 * sigma[2]


def test_draws_per_prompt_and_reproducible():
  cands = [[f"p{p}c{i}" for i in range(4)] for p in range(50)]
  scores = np.random.default_rng(0).normal(size=(50, 4))
  picks = I.soft_best_of_n(cands, scores, beta=1.0, rng=7)
  assert len(picks) == 50 and all(pick in row for pick, row in zip(picks, cands))
  assert I.soft_best_of_n(cands, scores, beta=1.0, rng=7) == picks
  assert I.soft_best_of_n(cands, scores, beta=1.0, rng=np.random.default_rng(7)) == picks
  assert I.soft_best_of_n(cands, scores, beta=1.0, rng=8) != picks
  # A tiny β is best-of-N.
  best = I.soft_best_of_n(cands, scores, beta=1e-6, rng=0)
  assert best == I.best_of_n(cands, scores)


def test_draws_never_pick_nan_rewards():
  row = [NAN, 0.0, NAN, 1.0]
  picks = [I.soft_best_of_n([[0, 1, 2, 3]], [row], beta=1.0, rng=s)[0] for s in range(1000)]
  assert set(picks) <= {1, 3}
  p3 = math.e / (1 + math.e)
  assert abs(picks.count(3) / 1000 - p3) < 5 * math.sqrt(p3 * (1 - p3) / 1000)
  # All NaN: uniform, never an error.
  picks = [I.soft_best_of_n([[0, 1, 2]], [[NAN] * 3], beta=1.0, rng=s)[0] for s in range(300)]
  assert set(picks) == {0, 1, 2}


def test_draw_errors():
  for beta in (0.0, -1.0):
    with pytest.raises(ValueError, match="beta > 0"):
      I.soft_best_of_n([["a", "b"]], [[0.0, 1.0]], beta=beta)
  with pytest.raises(ValueError, match="do not match"):
    I.soft_best_of_n([["a", "b"]], [[0.0, 1.0, 2.0]], beta=1.0)
  with pytest.raises(ValueError, match="do not match"):
    I.soft_best_of_n([["a", "b"], ["c", "d"]], [[0.0, 1.0]], beta=1.0)


# -- summarize ---------------------------------------------------------------


def _samples(correct, target_reward=None):
  p, k = correct.shape
  return I.EvalSamples(
      texts=[["x"] * k for _ in range(p)], answers=[[str(j) for j in range(k)] for _ in range(p)],
      correct=correct, loglik=-np.arange(p * k, dtype=float).reshape(p, k) / 10,
      lengths=np.ones((p, k), int), finished=np.ones((p, k), bool), target_reward=target_reward)


def test_summarize_pass_gap_and_soft_best_of_k():
  correct = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]], float)
  target = np.array([[2.0, 1.0, 0.0], [0.2, 0.1, 0.0], [1.0, 1.0, 3.0], [0.0, 2.0, 0.0]])
  m = I.summarize(_samples(correct, target), tilt_beta=0.5)
  assert m["pass@1"] == pytest.approx(4 / 12)
  assert m["pass@3"] == pytest.approx(3 / 4)
  assert m["pass_gap@3"] == pytest.approx(3 / 4 - 4 / 12, abs=1e-12)
  assert m["pass_gap@3"] == m["pass@3"] - m["pass@1"]
  assert m["soft_best_of_3"] == I.soft_best_of_n_expected(target, correct > 0, 0.5)
  # By hand: w = softmax(2 r) per row.
  w = np.exp(2 * target) / np.exp(2 * target).sum(1, keepdims=True)
  assert m["soft_best_of_3"] == pytest.approx(float(np.mean((w * correct).sum(1))), abs=1e-12)
  # best_of_3/target: rows 0, 3 pick their correct top; row 2 its wrong one.
  assert m["best_of_3/target"] == pytest.approx(0.5)
  assert m["tilt_beta"] == 0.5
  # best_of_3 (log-likelihood: the first sample of each row) is unchanged.
  assert m["best_of_3"] == pytest.approx(0.5)


def test_summarize_without_target_or_beta():
  correct = np.array([[1, 0], [0, 0]], float)
  m = I.summarize(_samples(correct))
  assert m["pass_gap@2"] == pytest.approx(0.5 - 0.25)
  assert "best_of_2/target" not in m and "soft_best_of_2" not in m
  m = I.summarize(_samples(correct, np.array([[1.0, 0.0], [0.0, 0.0]])))
  assert m["best_of_2/target"] == pytest.approx(0.5) and "soft_best_of_2" not in m


# -- collect's training reward, the rerank stage and the plots ------------------


@pytest.fixture(scope="module")
def model():
  return testing.tiny_model("llama", vocab_size=TOK.vocab_size, hidden_size=32,
                            intermediate_size=64)


def test_collect_fills_the_target_reward(model):
  problems = tasks.generate(tasks.ArithmeticTask(ops=("add",), max_digits=1), "test", 3)
  kw = dict(k=2, temperature=1.0, rng=jax.random.key(3), max_new_tokens=2, greedy=False)
  s = I.collect(model, TOK, problems, target_rewards=[rewards.eos_reward(weight=0.5)],
                target_correct_weight=2.0, **kw)
  assert s.target_reward.shape == (3, 2)
  np.testing.assert_allclose(s.target_reward, 2.0 * s.correct + 0.5 * s.finished, atol=1e-6)
  only_correct = I.collect(model, TOK, problems, target_correct_weight=3.0, **kw)
  np.testing.assert_array_equal(only_correct.correct, s.correct)   # same samples
  np.testing.assert_allclose(only_correct.target_reward, 3.0 * s.correct)
  assert I.collect(model, TOK, problems, **kw).target_reward is None


RANKING_ROWS = [
    {"step": 0, "reward": 0.1, "rewards/correct": 0.1, "ranking/kendall_tau": -0.1,
     "ranking/ndcg": 0.7, "ranking/top_rank_fraction": 0.5, "ranking/top_reward": 0.2,
     "ranking/top_rank": 2.0, "listwise/rewards/accuracies": 0.4,
     "listwise/rewards/mean": 0.0, "loss": 1.0},
    {"step": 1, "reward": 0.3, "rewards/correct": 0.3, "ranking/kendall_tau": 0.2,
     "ranking/ndcg": 0.8, "ranking/top_rank_fraction": 0.3, "ranking/top_reward": 0.6,
     "ranking/top_rank": 1.5, "listwise/rewards/accuracies": 0.6,
     "listwise/rewards/mean": 0.1, "loss": 0.8},
]


def _write_rows(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_plot_ranking_curve_and_reward_keys(tmp_path):
  metrics = _write_rows(tmp_path / "metrics.jsonl", RANKING_ROWS)
  assert I.read_metrics(metrics) == RANKING_ROWS
  assert _plots.reward_keys(RANKING_ROWS) == ["reward", "rewards/correct"]
  drawn = I.plot_ranking_curve(metrics, tmp_path / "plots" / "ranking_curve.png")
  assert drawn == list(_plots.RANKING_KEYS)
  assert (tmp_path / "plots" / "ranking_curve.png").read_bytes()[:8] == PNG_MAGIC
  assert I.plot_reward_curve(metrics, tmp_path / "r.png") == ["reward", "rewards/correct"]
  # Only some ranking keys logged: those are drawn.
  partial = _write_rows(tmp_path / "partial.jsonl",
                        [{"step": 0, "ranking/ndcg": 0.5}, {"step": 1, "ranking/ndcg": 0.6}])
  assert I.plot_ranking_curve(partial, tmp_path / "p.png") == ["ranking/ndcg"]
  plain = _write_rows(tmp_path / "plain.jsonl", [{"step": 0, "reward": 0.1}])
  with pytest.raises(ValueError, match="no likelihood vs reward ranking"):
    I.plot_ranking_curve(plain, tmp_path / "x.png")


def test_rerank_writes_ranking_curve_and_prints_soft_best(model, tmp_path, capsys):
  cfg = config_lib.Config(
      pipeline=("eval", "rerank"), data=config_lib.DataCfg(ops=("add",), max_digits=1),
      sample=config_lib.SampleCfg(max_new_tokens=2),
      eval=config_lib.EvalCfg(num_problems=3, num_samples=2, tilt_beta=0.25))
  _write_rows(tmp_path / "metrics.jsonl", RANKING_ROWS)
  run = run_lib.Run(cfg=cfg, workdir=tmp_path, task=tasks.from_config(cfg), tokenizer=TOK,
                    model=model)
  run_lib.STAGES["eval"](run)
  run_lib.STAGES["rerank"](run)
  out = capsys.readouterr().out
  assert "soft-best-of-2" in out and "pass_gap@2" in out
  for name in ("ranking_curve.png", "reward_curve.png", "pass_at_k.png"):
    assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG_MAGIC, name
  result = run.summary["rerank"]
  assert result["tilt_beta"] == 0.25
  assert result["pass_gap@2"] == pytest.approx(result["pass@2"] - result["pass@1"])
  assert 0.0 <= result["soft_best_of_2"] <= 1.0
  assert run.summary["plots"]["ranking_curve"].endswith("ranking_curve.png")
