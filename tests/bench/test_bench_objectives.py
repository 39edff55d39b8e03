"""Smoke test of `python -m rankjax.bench objectives`: at a tiny size the
program trains one SFT model, two GRPO objectives from it, evaluates all
three, times the steps and writes its plots. It checks the report, not the
figures."""

import json
import math
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("objectives")
  path = tmp / "objectives.json"
  cmd = [sys.executable, "-m", "rankjax.bench", "objectives", "--tiny", "--repeats", "1",
         "--objectives", "clipped;clipped,softmax", "--weights", ";1,0.5",
         "--workdir", str(tmp / "work"), "--json", str(path)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout, json.loads(path.read_text())


def test_table_and_json(result):
  stdout, r = result
  assert json.loads(stdout.strip().splitlines()[-1]) == r
  assert r["benchmark"] == "objectives"
  assert set(r["results"]) == {"sft", "clipped", "1*clipped+0.5*softmax"}
  for line in ("pass@1", "tau (last 10%)", "softmax loss (forward + backward) alone"):
    assert line in stdout


def test_every_model_is_evaluated_on_the_same_problems(result):
  _, r = result
  for name, res in r["results"].items():
    e = res["eval"]
    assert e["num_problems"] == 8 and e["k"] == 4, name
    assert 0 <= e["pass@1"] <= e["pass@4"] <= 1
    assert math.isclose(e["pass_gap@4"], e["pass@4"] - e["pass@1"], abs_tol=1e-9)
    assert "soft_best_of_4" in e


def test_tau_curves_step_times_and_plots(result):
  _, r = result
  for name in ("clipped", "1*clipped+0.5*softmax"):
    steps = [s for s, _ in r["results"][name]["tau_curve"]]
    assert steps == sorted(steps) and steps[-1] == 4
    assert r["step_seconds"][name] > 0
  assert r["step_seconds"]["softmax loss alone"] > 0
  assert set(r["plots"]) == {"tau", "pass_at_k"}
