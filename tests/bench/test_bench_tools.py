"""Smoke test of `python -m rankjax.bench tools`: at a tiny size the program
trains one SFT model, GRPO with and without the calculator from it,
evaluates all of them, writes the reward plot and the JSON. It checks the
report, not the figures."""

import json
import math
import subprocess
import sys

import pytest

MODELS = {"sft+calculator", "sft", "grpo+calculator", "grpo single-turn"}
WITH_TOOL = {"sft+calculator", "grpo+calculator"}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tools")
  path = tmp / "tools.json"
  cmd = [sys.executable, "-m", "rankjax.bench", "tools", "--tiny", "--threads", "1",
         "--workdir", str(tmp / "work"), "--json", str(path)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout, json.loads(path.read_text()), tmp / "work"


def test_table_and_json(result):
  stdout, r, _ = result
  assert json.loads(stdout.strip().splitlines()[-1]) == r
  assert r["benchmark"] == "tools"
  assert set(r["results"]) == MODELS
  for text in ("pass@1", "turn_rate", "pass@1 gain of calculator GRPO"):
    assert text in stdout
  assert math.isclose(r["pass_at_1_gain"], r["results"]["grpo+calculator"]["eval"]["pass@1"]
                      - r["results"]["grpo single-turn"]["eval"]["pass@1"])


def test_same_problems_and_tool_only_where_available(result):
  _, r, _ = result
  for name, res in r["results"].items():
    e = res["eval"]
    assert e["num_problems"] == 8 and e["k"] == 4, name
    assert 0 <= e["pass@1"] <= e["pass@4"] <= 1, name
    assert 0 <= e["greedy"] <= 1, name
    assert ("turn_rate" in e) == (name in WITH_TOOL), name
    if name in WITH_TOOL:
      assert 0 <= e["turn_rate"] <= 1, name


def test_curves_and_plot(result):
  _, r, work = result
  for name in ("grpo+calculator", "grpo single-turn"):
    steps = [s for s, _ in r["results"][name]["reward_curve"]]
    assert steps == [1, 2, 3, 4], name
    assert all(0 <= v <= 1 for _, v in r["results"][name]["reward_curve"]), name
  assert len(r["results"]["grpo+calculator"]["turn_rate_curve"]) == 4
  assert r["results"]["grpo single-turn"]["turn_rate_curve"] == []
  assert (work / "reward_curve.png").stat().st_size > 0
  assert r["plots"]["reward_curve"] == str(work / "reward_curve.png")
