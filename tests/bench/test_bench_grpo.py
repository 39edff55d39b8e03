"""Smoke test of `python -m rankjax.bench grpo`: the program runs end to end
at a tiny size (without TRL) and reports every figure. It checks the report,
not speed."""

import json
import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import rewards
from rankjax.bench import grpo


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  path = tmp_path_factory.mktemp("bench") / "grpo.json"
  cmd = [sys.executable, "-m", "rankjax.bench", "grpo", "--tiny", "--no-trl", "--repeats", "1",
         "--json", str(path)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout, json.loads(path.read_text())


def test_json_line_on_stdout_matches_the_file(result):
  stdout, written = result
  assert json.loads(stdout.strip().splitlines()[-1]) == written
  assert written["benchmark"] == "grpo"


def test_step_split_floor_and_memory_are_positive(result):
  _, r = result
  rj = r["rankjax"]
  assert _positive(rj["seconds_per_step"]) and rj["step"]["compile_s"] >= 0
  for piece in grpo.PIECES:
    assert _positive(rj["split_s"][piece]), piece
    assert rj["split_cpu_s"][piece] >= 0, piece
  assert _positive(rj["pieces_sum_s"])
  assert _positive(rj["peak_rss_mb"])
  for kind in ("floor", "full_sequence"):
    floor = r["floor"][kind]
    assert _positive(floor["seconds"]) and _positive(floor["gflop_total"]), kind
    for piece in ("sample", "reference", "update"):
      assert _positive(floor["piece_s"][piece]), (kind, piece)
  # Charging the prompt positions too can only raise the floor.
  assert r["floor"]["full_sequence"]["seconds"] > r["floor"]["floor"]["seconds"]
  assert _positive(r["machine"]["matmul_gflops"])
  assert _positive(r["fractions"]["floor_fraction"])


def test_completions_are_forced_to_full_length(result):
  _, r = result
  m, w = r["rankjax"]["metrics"], r["workload"]
  assert m["completion_length"] == w["new_tokens"] and m["truncated_fraction"] == 1.0
  assert m["nonfinite"] == 0.0 and m["reward_applicable"] == 1.0


def test_trl_is_reported_as_not_run(result):
  stdout, r = result
  assert r["trl"] is None and r["trl_status"] == "skipped (--no-trl)"
  assert "vs_trl" not in r["fractions"] and "vs_trl" not in r["targets"]
  assert "floor_fraction" in r["targets"]
  assert "TRL" in stdout


def test_flop_floor_counts_every_piece():
  cfg = grpo.model_config(type("A", (), {"tiny": False, "layers": None})())
  w = grpo.Workload(batch=8, group=8, prompt_len=32, new_tokens=64)
  n, tokens = grpo.matmul_params(cfg), 8 * 8 * 64
  flops = grpo.step_flops(cfg, w)["floor"]
  assert flops["sample"] == 2 * n * tokens
  assert flops["reference"] == 2 * n * tokens
  assert flops["update"] == 6 * n * tokens * grpo.NUM_ITERATIONS


def test_both_systems_score_with_the_same_reward():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 100, (6, 9)).astype(np.int32)
  inputs = rewards.RewardInputs(
      prompt_tokens=jnp.zeros((6, 1), jnp.int32), prompt_mask=jnp.ones((6, 1), bool),
      completion_tokens=jnp.asarray(tokens), completion_mask=jnp.ones(tokens.shape, bool),
      finished=jnp.zeros(6, bool), extras={})
  in_graph = np.asarray(grpo.even_token_reward().fn(inputs, None))
  host = grpo.even_tokens(None, None, completion_ids=tokens.tolist())
  np.testing.assert_allclose(in_graph, host, rtol=1e-6)


def test_word_tokenizer_reproduces_the_prompt_ids():
  pytest.importorskip("transformers")
  tok = grpo.word_tokenizer(32000)
  ids = np.random.default_rng(0).integers(2, 32000, (4, 32))
  for row in ids:
    assert tok(grpo.prompt_text(row))["input_ids"] == row.tolist()


def test_env_mode_times_both_ways_of_writing_observations(capsys):
  """`--env calculator`: every turn regime x observation mode against no
  environment, all on the same full buffers; the default row is forced."""
  r = grpo.main(["--env", "calculator", "--tiny", "--repeats", "1", "--new-tokens", "24",
                 "--turn-tokens", "4"])
  out = capsys.readouterr().out
  names = {f"{regime}/{obs}" for regime in grpo.REGIMES for obs in ("forced", "prefill")}
  assert set(r["variants"]) == names
  for name, v in r["variants"].items():
    assert _positive(v["seconds"]) and _positive(v["overhead"]), name
    assert v["row_turns"] > 0 and 0 < v["model_token_fraction"] < 1, name
    assert name in out
  budget = {o: r["variants"][f"budget/{o}"] for o in ("forced", "prefill")}
  # Turns ended by the budget alone: the same transcripts either way.
  assert budget["forced"]["row_turns"] == budget["prefill"]["row_turns"]
  assert budget["forced"]["model_token_fraction"] == budget["prefill"]["model_token_fraction"]
  # Staggered turns end at more distinct decode steps than budget turns.
  assert (r["variants"]["staggered/forced"]["turn_end_steps"]
          > budget["forced"]["turn_end_steps"])
  assert r["env_overhead"] == budget["forced"]["overhead"]
  assert "env_overhead" in r["targets"]
