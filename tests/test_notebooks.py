"""The colab/ notebooks: generated from colab/build_notebooks.py, stored
without outputs, and run top to bottom in a fresh kernel at
RANKJAX_NOTEBOOK_SIZE=tiny, each in its own workdir; then the files each
notebook promises are checked."""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
BADGE = "https://colab.research.google.com/github/rankjax/rankjax/blob/main/colab/{}"


def _generator():
  spec = importlib.util.spec_from_file_location("build_notebooks", COLAB / "build_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


NAMES = list(_generator().NOTEBOOKS)


def _read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _png(path):
  assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_notebooks_match_generator_and_have_no_outputs():
  for name, text in _generator().build().items():
    path = COLAB / name
    assert path.read_text(encoding="utf-8") == text, (
        f"{name} is stale: run python colab/build_notebooks.py")
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    first, install = nb.cells[0], nb.cells[1]
    assert first.cell_type == "markdown" and BADGE.format(name) in first.source
    assert install.cell_type == "code" and 'find_spec("rankjax") is None' in install.source
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, name


def _check_quickstart(work):
  report = json.loads((work / "decoding.json").read_text())
  prompts, results = report["prompts"], report["results"]
  assert list(results) == ["greedy", "temperature 0.7", "top-k 20", "top-p 0.9", "min-p 0.1",
                           "greedy + repetition penalty 1.3", "4 samples per prompt",
                           "beam search, 4 beams"]
  for name, r in results.items():
    rows = len(prompts) * (4 if name == "4 samples per prompt" else 1)
    assert len(r["completions"]) == len(r["logprob"]) == rows, name
    assert all(isinstance(c, str) for c in r["completions"])
    assert all(math.isfinite(x) and x <= 0 for x in r["logprob"]), name


def _check_sft_dpo(work):
  sft = [r for r in _read_jsonl(work / "sft" / "metrics.jsonl") if "loss" in r]
  assert [r["step"] for r in sft] == list(range(1, 11))
  dpo_rows = _read_jsonl(work / "dpo" / "metrics.jsonl")
  train = [r for r in dpo_rows if "loss" in r]
  assert [r["step"] for r in train] == list(range(1, 11))
  # The reference is the SFT model (LoRA adapters off), so DPO starts at log 2.
  assert abs(train[0]["loss"] - math.log(2)) < 1e-4
  assert all(0 <= r["rewards/accuracies"] <= 1 for r in train)
  assert [r["step"] for r in dpo_rows if "eval/rewards/accuracies" in r] == [5, 10]
  summary = json.loads((work / "dpo" / "summary.json").read_text())["dpo"]
  assert summary["steps"] == 10 and summary["lora_rank"] == 8
  assert (work / "dpo" / "export" / "config.json").is_file()
  _png(work / "sft_dpo.png")


def _check_grpo(work):
  summary = json.loads((work / "summary.json").read_text())
  assert summary["evaluated"] == ["sft", "grpo"]
  for stage in ("sft", "grpo"):
    assert 0 <= summary[stage]["pass@1"] <= summary[stage]["pass@4"] <= 1
    assert set(summary["pass_at_k_curves"][stage]) == {"1", "2", "3", "4"}
  assert summary["rerank"]["model"] == "grpo"
  grpo = [r for r in _read_jsonl(work / "metrics.jsonl") if r.get("stage") == "grpo"]
  assert [r["step"] for r in grpo] == [1, 2, 3, 4]
  assert all(0 <= r["reward"] <= 1 for r in grpo)
  for png in ("plots/pass_at_k.png", "plots/reward_curve.png", "grpo_curves.png"):
    _png(work / png)


def _check_gsm8k(work):
  assert len((work / "gsm8k" / "train.jsonl").read_text().splitlines()) == 16
  assert (work / "tiny-qwen2" / "model.safetensors").is_file()
  run = work / "run"
  summary = json.loads((run / "summary.json").read_text())
  assert summary["evaluated"] == ["base", "grpo"]
  for stage in ("base", "grpo"):
    assert summary[stage]["num_problems"] == 8 and 0 <= summary[stage]["pass@1"] <= 1
  grpo = [r for r in _read_jsonl(run / "metrics.jsonl") if r.get("stage") == "grpo"]
  assert [r["step"] for r in grpo] == [1, 2, 3]
  assert all(r["nonfinite"] == 0 and 0 <= r["rewards/correct"] <= 1 for r in grpo)
  assert (run / "export" / "config.json").is_file()
  for png in ("plots/reward_curve.png", "plots/pass_at_k.png"):
    _png(work / png)


def _check_multi_turn(work):
  summary = json.loads((work / "summary.json").read_text())
  assert summary["evaluated"] == ["sft", "grpo"]
  for stage in ("sft", "grpo"):
    assert summary[stage]["num_problems"] == 8
    assert 0 <= summary[stage]["turn_rate"] <= 1, stage
    assert summary[stage]["mean_turns"] >= 0, stage
  grpo = [r for r in _read_jsonl(work / "metrics.jsonl") if r.get("stage") == "grpo"]
  assert [r["step"] for r in grpo] == [1, 2, 3]
  for r in grpo:
    assert math.isfinite(r["env/turns"]) and r["env/turns"] >= 0, r
    assert math.isfinite(r["env/turn_rate"]) and 0 <= r["env/turn_rate"] <= 1, r
    assert 0 <= r["reward"] <= 1, r
  _png(work / "multi_turn_curves.png")


CHECKS = {
    "01_quickstart.ipynb": _check_quickstart,
    "02_sft_dpo.ipynb": _check_sft_dpo,
    "03_grpo_arithmetic.ipynb": _check_grpo,
    "04_real_model_gsm8k.ipynb": _check_gsm8k,
    "05_multi_turn_tools.ipynb": _check_multi_turn,
}


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_at_tiny_size(name, tmp_path, monkeypatch):
  work = tmp_path / "work"
  monkeypatch.setenv("RANKJAX_NOTEBOOK_SIZE", "tiny")
  monkeypatch.setenv("RANKJAX_WORKDIR", str(work))
  # The kernel imports this checkout's rankjax, so the install cell is skipped.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  for var in ("RANKJAX_MODEL_PATH", "RANKJAX_GSM8K_DIR"):
    monkeypatch.delenv(var, raising=False)
  nb = nbformat.read(COLAB / name, as_version=4)
  # kernel_name "python3" runs `python -m ipykernel_launcher`, and
  # jupyter_client swaps a bare "python" for sys.executable: this interpreter.
  client = NotebookClient(nb, kernel_name="python3", timeout=600,
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError naming the failing cell

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  if name != "01_quickstart.ipynb":  # the quickstart shows a table, no plot
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} showed no plot"
  CHECKS[name](work)


def test_kernel_is_this_interpreter(tmp_path):
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
      "import sys\nprint(sys.executable)")])
  NotebookClient(nb, kernel_name="python3", timeout=120,
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  printed = nb.cells[0].outputs[0]["text"].strip()
  assert os.path.realpath(printed) == os.path.realpath(sys.executable)
