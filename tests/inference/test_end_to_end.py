"""End to end through `rankjax.launch.main`, at CI size: the default demo
(sft -> eval -> grpo -> eval -> rerank) and one iteration of each
self-improvement loop (STaR, iterative DPO). They check that every stage
runs and writes its table, summary.json, plots and exports; the demo's
accuracy gain is measured by the full-size run, not here."""

import json
import os

import pytest

from rankjax import launch, models
from rankjax.tokenizer import CharTokenizer, load_tokenizer

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.data.batch_size=8", "--config.data.max_length=16",
        "--config.data.max_prompt_length=12",
        "--config.data.num_eval=8", "--config.log_every=1"]
K = 4


def _summary(workdir):
  return json.loads((workdir / "summary.json").read_text())


def _table_rows(out, header):
  """The data rows of the printed table whose header line starts `header`."""
  lines = out[out.rindex(header):].splitlines()
  rows = []
  for line in lines[2:]:
    if not line.strip():
      break
    rows.append(line.split())
  return rows


def test_evals_before_and_after_training_share_one_compiled_sampler(tmp_path):
  # The run's model starts on the mesh as training leaves it, so the eval
  # after SFT reuses the sampler the eval before it compiled (one program
  # for the k samples, one for greedy), instead of compiling both again.
  from rankjax.sampling import _generate
  before = _generate._sample_jit._cache_size()
  assert launch.main(["--workdir", str(tmp_path), *TINY, "--config.pipeline=eval,sft,eval",
                      "--config.sft.steps=2", "--config.eval.num_problems=4",
                      "--config.eval.num_samples=2", "--config.checkpoint.export_hf=false"]) == 0
  assert _summary(tmp_path)["evaluated"] == ["base", "sft"]
  assert _generate._sample_jit._cache_size() - before == 2


def test_default_demo_at_ci_size(tmp_path, capsys):
  """`python -m rankjax.launch` with no config: every stage, the comparison
  table, summary.json keyed by stage, the plots, an export that loads."""
  assert launch.main(["--workdir", str(tmp_path), *TINY, "--config.sft.steps=6",
                      "--config.grpo.steps=2", "--config.grpo.num_prompts=4",
                      "--config.grpo.group_size=4", "--config.eval.num_problems=6",
                      f"--config.eval.num_samples={K}"]) == 0
  out = capsys.readouterr().out
  s = _summary(tmp_path)
  assert s["evaluated"] == ["sft", "grpo"]
  for stage in ("sft", "grpo"):
    for key in ("pass@1", f"pass@{K}", f"maj@{K}", f"best_of_{K}"):
      assert 0.0 <= s[stage][key] <= 1.0, (stage, key)
    assert s[stage]["pass@1"] <= s[stage][f"pass@{K}"]
    assert s["wall_seconds"][stage] > 0
  assert set(s["wall_seconds"]) == {"sft", "eval", "grpo", "eval_2", "rerank"}
  assert s["grpo"]["steps"] == 2 and s["sft"]["steps"] == 6
  assert set(s["pass_at_k_curves"]) == {"sft", "grpo"}
  # The comparison table: one row per evaluated model, then the reranked one.
  rows = _table_rows(out, "stage")
  assert [r[0] for r in rows][:2] == ["sft", "grpo"]
  for r in rows[:2]:
    assert float(r[1]) == pytest.approx(s[r[0]]["pass@1"], abs=5e-4)
  for name in ("pass_at_k", "reward_curve"):
    path = tmp_path / "plots" / f"{name}.png"
    assert s["plots"][name] == str(path) and path.read_bytes()[:8] == PNG_MAGIC
  # The export stands alone: weights plus the tokenizer marker.
  assert isinstance(load_tokenizer(tmp_path / "export"), CharTokenizer)
  assert models.from_pretrained(tmp_path / "export").config.num_layers == 1


@pytest.mark.parametrize("recipe,train_stage", [("star", "sft"), ("iterative_dpo", "dpo")])
def test_self_improvement_one_iteration(recipe, train_stage, tmp_path, capsys):
  """SFT (long enough that 1-digit sums are sometimes right), then one
  sample -> verify -> train iteration, evaluated before and after."""
  argv = ["--config", os.path.join(CONFIGS, f"{recipe}.py"), "--workdir", str(tmp_path),
          *TINY, "--config.data.max_digits=1", "--config.data.sft_noise=0.3",
          "--config.sft.steps=60", "--config.optim.learning_rate=1e-2",
          "--config.self_improve.iterations=1", "--config.self_improve.num_prompts=48",
          f"--config.self_improve.num_samples={K}", "--config.self_improve.train_steps=2",
          "--config.eval.num_problems=6", f"--config.eval.num_samples={K}"]
  assert launch.main(argv) == 0
  out = capsys.readouterr().out
  s = _summary(tmp_path)
  (it,) = s[recipe]["iterations"]
  assert it["iteration"] == 1 and 0.0 < it["sample_accuracy"] < 1.0
  # Enough verified rows (or pairs) to train on, and training ran on them.
  assert it["rows"] >= 8 and it["train_loss"] is not None, it
  assert f"{recipe} iteration 1: sample accuracy" in out
  assert s["evaluated"] == ["sft", recipe]
  metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  trained = [r for r in metrics if r.get("stage") == f"{recipe}_{train_stage}_1" and "loss" in r]
  assert [r["step"] for r in trained] == [1, 2]
