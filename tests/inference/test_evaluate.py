"""evaluate()/summarize() on fixed samples and a tiny random model, the eval
and rerank stages, and the PNG plots."""

import dataclasses
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
from rankjax.inference import _plots, _stages
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
K = 2


@pytest.fixture(scope="module")
def model():
  return testing.tiny_model("llama", vocab_size=TOK.vocab_size, hidden_size=32,
                            intermediate_size=64)


@pytest.fixture(scope="module")
def problems():
  return tasks.generate(tasks.ArithmeticTask(ops=("add",), max_digits=1), "test", 3)


def _sigmoid(x):
  return 1 / (1 + math.exp(-x))


def test_summarize_fixed_samples():
  samples = I.EvalSamples(
      texts=[["3", "3", "4"], ["5", "", "6"]],
      answers=[["3", "3", "4"], ["5", None, "6"]],
      correct=np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
      loglik=np.array([[-1.0, -2.0, -0.5], [-0.1, -3.0, -0.2]]),
      lengths=np.array([[2, 2, 2], [2, 1, 2]]),
      finished=np.array([[True, True, False], [True, True, True]]),
      reward=np.array([[0.0, 5.0, -5.0], [0.0, -1.0, 2.0]]),
      greedy_correct=np.array([1.0, 0.0]))
  m = I.summarize(samples)
  assert m["k"] == 3 and m["num_problems"] == 2
  assert m["pass@1"] == pytest.approx(0.5)
  assert m["pass@3"] == pytest.approx(1.0)
  assert m["maj@3"] == pytest.approx(0.5)          # problem 1: "5" wins the tie, wrong
  assert m["best_of_3"] == pytest.approx(0.0)      # likelihood picks wrong samples
  assert m["best_of_3/reward"] == pytest.approx(1.0)
  assert m["weighted_vote@3/reward"] == pytest.approx(1.0)
  assert m["greedy"] == pytest.approx(0.5)
  taus = [I.kendall_tau(s, c) for s, c in zip(samples.loglik, samples.correct)]
  assert m["kendall_tau"] == pytest.approx(np.mean(taus))
  ndcg0 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
  ndcg1 = 1 / math.log2(3)
  assert m["ndcg"] == pytest.approx((ndcg0 + ndcg1) / 2)
  assert m["rank_informative"] == pytest.approx(1.0)
  assert m["finished"] == pytest.approx(5 / 6)
  assert m["mean_length"] == pytest.approx(11 / 6)
  # The weighted vote uses σ(reward): "6" (σ(2)) beats "5" (σ(0)).
  assert _sigmoid(2.0) > _sigmoid(0.0)
  assert I.vote_accuracy(samples.answers, samples.correct) == pytest.approx(0.5)


def test_evaluate_tiny_model_is_well_formed(model, problems):
  rm = testing.tiny_model("qwen2", seed=5, vocab_size=TOK.vocab_size, hidden_size=32,
                          intermediate_size=64, num_labels=1)
  m = I.evaluate(model, TOK, problems, k=K, temperature=1.0, rng=jax.random.key(0),
                 rewards=[rewards.reward_model_score(rm)], max_new_tokens=2)
  for key in ("pass@1", f"pass@{K}", f"maj@{K}", f"best_of_{K}", f"best_of_{K}/reward",
              f"weighted_vote@{K}/reward", "greedy", "finished", "rank_informative"):
    assert 0.0 <= m[key] <= 1.0, key
  for key in ("kendall_tau", "kendall_tau/reward"):
    assert np.isnan(m[key]) or -1.0 <= m[key] <= 1.0
  assert np.isnan(m["ndcg"]) or 0.0 <= m["ndcg"] <= 1.0
  assert 1 <= m["mean_length"] <= 2
  assert m[f"pass@{K}"] >= m["pass@1"]


def test_collect_shapes_and_paired_verification(model):
  problems = tasks.generate(tasks.ArithmeticTask(ops=("sub",), max_digits=1), "test", 4)
  s = I.collect(model, TOK, problems, k=K, temperature=1.0, rng=jax.random.key(1),
                max_new_tokens=2, batch_size=2, greedy=False)   # two chunks of prompts
  assert s.correct.shape == s.loglik.shape == (4, K) and len(s.texts) == 4
  assert s.greedy_correct is None and s.reward is None
  for p, row in enumerate(s.texts):
    for j, text in enumerate(row):
      assert s.correct[p, j] == tasks.verify(text, problems[p]["answer"])
      assert s.answers[p][j] == tasks.extract_answer(text)
  assert np.all(s.loglik <= 0)
  curve = I.pass_at_k_curve(s.correct)
  assert list(curve) == [1, 2] and curve[1] <= curve[2]


def test_eval_label():
  pipe = ("eval", "sft", "eval", "generate", "grpo", "eval", "rerank")
  assert [_stages.eval_label(pipe, n) for n in range(3)] == ["base", "sft", "grpo"]
  assert _stages.eval_label(("sft", "rerank"), 0) == "sft"
  pipe = ("sft", "rerank", "grpo", "eval", "rerank")
  assert [_stages.eval_label(pipe, n, "rerank") for n in range(2)] == ["sft", "grpo"]


def test_stages_registered_and_run(model, tmp_path, capsys):
  assert run_lib.STAGES["eval"] is _stages.stage_eval
  assert run_lib.STAGES["rerank"] is _stages.stage_rerank
  cfg = config_lib.Config(
      pipeline=("eval", "sft", "eval", "rerank"),
      data=config_lib.DataCfg(ops=("add",), max_digits=1),
      sample=config_lib.SampleCfg(max_new_tokens=2),
      eval=config_lib.EvalCfg(num_problems=3, num_samples=K))
  rows = [{"step": 0, "reward/mean": 0.1}, {"step": 1, "reward/mean": 0.3, "loss": 1.0},
          {"step": 0, "reward/mean": 0.2}, {"step": 1, "loss": 0.5}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  run = run_lib.Run(cfg=cfg, workdir=tmp_path, task=tasks.from_config(cfg), tokenizer=TOK,
                    model=model, summary={"sft": {"loss": 0.7}})
  run_lib.STAGES["eval"](run)
  run_lib.STAGES["eval"](run)     # (the model is unchanged here: same numbers)
  run_lib.STAGES["rerank"](run)
  s = run.summary
  assert s["evaluated"] == ["base", "sft"]
  assert s["sft"]["loss"] == 0.7 and 0 <= s["sft"]["pass@1"] <= 1   # merged
  assert s["sft"]["pass@1"] == s["base"]["pass@1"]  # same problems, same key
  assert set(s["pass_at_k_curves"]) == {"base", "sft"}
  assert list(s["pass_at_k_curves"]["sft"]) == ["1", "2"]
  assert s["rerank"]["model"] == "sft" and s["reranked"] == ["sft"]
  assert set(s["rerank"]["best_of_n_curves"]["loglik"]) == {"1", "2"}
  for name in ("pass_at_k.png", "reward_curve.png"):
    assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG_MAGIC
  json.loads(json.dumps(s, default=float))
  run.write_summary()
  assert json.loads((tmp_path / "summary.json").read_text())["evaluated"] == ["base", "sft"]
  out = capsys.readouterr().out
  table = out[out.index("rerank: N=2"):]
  for col in ("pass@1", "maj@2", "pass@2", "best-of-2"):
    assert col in table
  for row in ("base", "sft", "rerank (sft)"):
    assert row in table


def test_eval_rejects_unverifiable_source(model, tmp_path):
  cfg = config_lib.Config(pipeline=("eval",), data=config_lib.DataCfg(source="jsonl", path="x"))
  run = run_lib.Run(cfg=cfg, workdir=tmp_path, task=tasks.from_config(cfg), tokenizer=TOK,
                    model=model)
  with pytest.raises(ValueError, match="verifiable"):
    _stages.stage_eval(run)


def test_plots_write_png(tmp_path):
  out = I.plot_pass_at_k({"sft": {1: 0.2, 2: 0.3, 4: 0.5}, "grpo": {"1": 0.4, "2": 0.5}},
                         tmp_path / "sub" / "p.png")
  assert out.read_bytes()[:8] == PNG_MAGIC
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("\n".join(json.dumps(r) for r in [
      {"step": 1, "loss": 2.0}, {"step": 2, "reward": 0.1, "rewards/correct": 0.0},
      {"step": 3, "reward": 0.4, "rewards/correct": 1.0}]) + "\n")
  keys = I.plot_reward_curve(metrics, tmp_path / "r.png")
  assert keys == ["reward", "rewards/correct"]
  segments = _plots._segments([{"step": 0, "reward": 1, "stage": "sft"},
                               {"step": 1, "reward": 2, "stage": "sft"},
                               {"step": 0, "reward": 3, "stage": "grpo"}], "reward")
  assert segments == [("sft", [0, 1], [1, 2]), ("grpo", [0], [3])]
  assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC
  with pytest.raises(ValueError, match="no reward"):
    I.plot_reward_curve(metrics, tmp_path / "x.png", keys=["loss_typo"])
  with pytest.raises(ValueError):
    I.plot_pass_at_k({}, tmp_path / "y.png")
