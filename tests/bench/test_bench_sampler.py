"""Smoke test of `python -m rankjax.bench sampler`: the program runs end to end
at a tiny size and reports every figure. It checks the report, not speed."""

import json
import math

import pytest

from rankjax.bench import __main__ as bench_main
from rankjax.bench import sampler


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  path = tmp_path_factory.mktemp("bench") / "sampler.json"
  out = sampler.main(["--tiny", "--repeats", "1", "--json", str(path)])
  return out, json.loads(path.read_text())


def test_json_file_matches_the_returned_result(result):
  out, written = result
  assert written["benchmark"] == "sampler"
  assert set(written) == set(out)


def test_every_mode_reports_both_systems(result):
  _, r = result
  assert set(r["modes"]) == set(sampler.MODES)
  for mode, res in r["modes"].items():
    for system in ("rankjax", "transformers"):
      for key in ("tokens_per_s", "median_s", "best_s", "first_s"):
        assert _positive(res[system][key]), (mode, system, key)
      assert res[system]["compile_s"] >= 0
    assert _positive(res["ratio"])
    assert _positive(res["peak_rss_mb"])


def test_ceiling_floor_and_machine_figures_are_positive(result):
  _, r = result
  for key in ("step_ms", "prefill_ms", "tokens_per_s", "with_prefill_tokens_per_s"):
    assert _positive(r["bare_step"][key]), key
  for key in ("bandwidth_ms_per_step", "bandwidth_tokens_per_s", "weights_mb",
              "kv_live_mb", "bytes_per_step_mb", "gflop_per_step"):
    assert _positive(r["floor"][key]), key
  for mode in sampler.MODES:
    assert _positive(r["floor_by_mode"][mode]["roofline_tokens_per_s"]), mode
    assert _positive(r["fractions"][f"rankjax_{mode}_vs_roofline"]), mode
  for key in ("bandwidth_gbps", "matmul_gflops", "threads"):
    assert _positive(r["machine"][key]), key
  assert _positive(r["memory"]["peak_rss_mb"])


def test_fractions_and_targets(result):
  _, r = result
  for key in ("greedy_vs_transformers", "top_p_vs_transformers", "beam_vs_transformers",
              "greedy_vs_bandwidth_floor", "greedy_vs_bare_step", "top_p_vs_greedy"):
    assert _positive(r["fractions"][key]), key
  assert set(r["targets"]) == {key for key, _, _ in sampler.TARGETS}
  for t in r["targets"].values():
    assert t["pass"] == (t["measured"] >= t["target"])


def test_both_systems_decode_the_same_weights(result):
  _, r = result
  # Greedy decoding of identical weights agrees token for token (float32).
  assert r["greedy_prefix_agreement"] > 0.9


def test_unknown_benchmark_lists_the_available_ones(capsys):
  assert bench_main.main(["nope"]) == 2
  err = capsys.readouterr().err
  assert "unknown benchmark 'nope'" in err and "sampler" in err
