"""2-step runs of every training recipe through `rankjax.launch.main`, at
tiny sizes, on the built-in task and on user JSONL files."""

import json
import os

import numpy as np
import pytest

from rankjax import launch, models

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.data.batch_size=4", "--config.data.max_length=24",
        "--config.data.max_prompt_length=16",
        "--config.data.num_train=16", "--config.data.num_eval=8",
        "--config.log_every=1", "--config.eval_every=2"]
STAGES = {"sft": ("sft",), "rm": ("rm",), "dpo": ("sft", "dpo"), "kto": ("sft", "kto"),
          "listwise": ("sft", "listwise")}
# Recipes whose pipeline also evaluates: the smoke test runs the training stages only.
PIPELINE = {"listwise": "--config.pipeline=sft,listwise"}


def _launch(recipe, workdir, *extra, code=0):
  argv = ["--config", os.path.join(CONFIGS, f"{recipe}.py"), "--workdir", str(workdir),
          *TINY, *extra]
  assert launch.main(argv) == code


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _check_export(path):
  model = models.from_pretrained(path)
  logits = np.asarray(model(np.array([[1, 20, 21, 22]], np.int32))
                      if model.config.lm_head else model.values(model.hidden_states(
                          np.array([[1, 20, 21, 22]], np.int32))))
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("recipe", list(STAGES))
def test_recipe_two_steps(recipe, tmp_path):
  stages = STAGES[recipe]
  _launch(recipe, tmp_path, *[f"--config.{s}.steps=2" for s in stages],
          *([PIPELINE[recipe]] if recipe in PIPELINE else []))
  rows = _metrics(tmp_path)
  for stage in stages:
    train_rows = [r for r in rows if r["stage"] == stage and "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2], train_rows
    assert all(np.isfinite(r["loss"]) and r["nonfinite"] == 0 for r in train_rows)
    assert any("eval/loss" in r for r in rows if r["stage"] == stage)
    assert (tmp_path / "tensorboard" / stage).is_dir()
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert all(summary[s]["steps"] == 2 for s in stages)
  _check_export(tmp_path / "export" / "reward_model" if recipe == "rm" else tmp_path / "export")
  if recipe == "dpo":  # LoRA in DPO only (lora_stages), merged at export
    assert summary["sft"]["lora_rank"] == 0 and summary["dpo"]["lora_rank"] == 8
    assert summary["dpo"]["trainable_params"] < summary["sft"]["trainable_params"]


def test_sft_resumes_from_checkpoint(tmp_path):
  _launch("sft", tmp_path, "--config.sft.steps=2")
  _launch("sft", tmp_path, "--config.sft.steps=3")
  steps = [r["step"] for r in _metrics(tmp_path) if "loss" in r]
  assert steps == [1, 2, 3]  # the second run resumed at step 2
  assert json.loads((tmp_path / "summary.json").read_text())["sft"]["steps"] == 3


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_dpo_on_user_jsonl_with_precomputed_reference(tmp_path):
  rows = [{"prompt": f"{a}+{a}=", "chosen": str(2 * a), "rejected": str(2 * a + 1)}
          for a in range(12)]
  path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
  _launch("dpo", tmp_path / "run", "--config.pipeline=dpo", "--config.data.source=jsonl",
          f"--config.data.path={path}", f"--config.data.eval_path={path}",
          "--config.dpo.steps=2", "--config.dpo.precompute_ref=true")
  rows = [r for r in _metrics(tmp_path / "run") if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert abs(rows[0]["loss"] - np.log(2)) < 1e-5  # cached reference == initial policy
  _check_export(tmp_path / "run" / "export")


def test_kto_on_user_unpaired_jsonl(tmp_path):
  rows = [{"prompt": f"{a}+1=", "completion": str(a + 1 + (i % 2)), "label": i % 2 == 0}
          for i, a in enumerate(range(16))]
  path = _write_jsonl(tmp_path / "kto.jsonl", rows)
  _launch("kto", tmp_path / "run", "--config.pipeline=kto", "--config.data.source=jsonl",
          f"--config.data.path={path}", "--config.kto.steps=2")
  assert [r["step"] for r in _metrics(tmp_path / "run") if "loss" in r] == [1, 2]


def test_wrong_format_for_stage_is_a_clear_error(tmp_path, capsys):
  path = _write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "1+1=", "completion": "2"}] * 8)
  _launch("dpo", tmp_path / "run", "--config.pipeline=dpo", "--config.data.source=jsonl",
          f"--config.data.path={path}", "--config.dpo.steps=2", code=2)
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("error: ") and "stage 'dpo' trains on preference" in last, last


def test_ppo_resume_restores_critic_and_kl_coefficient(tmp_path):
  """3 PPO steps straight == 2 steps, stop, resume to 3: the separate
  critic and the adaptive KL coefficient come back from the checkpoint, so
  the resumed step's metrics and the final weights are identical."""
  ppo = ["--config.pipeline=ppo", "--config.ppo.num_prompts=4", "--config.ppo.num_epochs=1",
         "--config.ppo.num_minibatches=1", "--config.ppo.shared_critic=false",
         "--config.ppo.adaptive_kl_target=0.01", "--config.ppo.adaptive_kl_horizon=8",
         "--config.sample.max_new_tokens=3", "--config.checkpoint.every=1"]
  _launch("ppo_arith", tmp_path / "straight", *ppo, "--config.ppo.steps=3")
  _launch("ppo_arith", tmp_path / "resumed", *ppo, "--config.ppo.steps=2")
  _launch("ppo_arith", tmp_path / "resumed", *ppo, "--config.ppo.steps=3")
  rows = {}
  for run in ("straight", "resumed"):
    rows[run] = {r["step"]: r for r in _metrics(tmp_path / run) if "loss" in r}
  assert sorted(rows["resumed"]) == [1, 2, 3]
  # The adaptive coefficient moved, and the resumed run continued from it.
  assert rows["straight"][3]["kl_coef"] != rows["straight"][1]["kl_coef"]
  straight, resumed = rows["straight"][3], rows["resumed"][3]
  assert any(k.startswith("value/") for k in straight)
  for key in straight.keys() - {"tokens_per_s"}:
    assert resumed[key] == straight[key], key
  a = models.from_pretrained(tmp_path / "straight" / "export")
  b = models.from_pretrained(tmp_path / "resumed" / "export")
  np.testing.assert_array_equal(np.asarray(a.lm_head[...]), np.asarray(b.lm_head[...]))
