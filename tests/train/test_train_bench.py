"""Smoke test of `python -m rankjax.bench train` at a tiny size: it runs end
to end (variants in subprocesses) and reports every figure. It checks the
report, not speed."""

import json
import math

import pytest

from rankjax.bench import __main__ as bench_main
from rankjax.bench import train as bench_train


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_train_bench_reports_every_figure(tmp_path):
  path = tmp_path / "train.json"
  assert "train" in bench_main.BENCHMARKS
  out = bench_train.main(["--tiny", "--repeats", "1", "--variants", "sft,dpo_lora",
                          "--json", str(path)])
  written = json.loads(path.read_text())
  assert written["benchmark"] == "train" and set(written) == set(out)
  for name in ("sft", "dpo_lora"):
    v = written["variants"][name]
    for key in ("tokens_per_s", "gflops", "matmul_peak_gflops", "mfu", "peak_rss_mb",
                "gflop_per_step"):
      assert _positive(v[key]), (name, key)
    assert _positive(v["step"]["median_s"]) and math.isfinite(v["loss"])
  assert written["variants"]["dpo_lora"]["trainable_params"] < \
      written["variants"]["sft"]["trainable_params"]
  assert "sft_mfu" in written["targets"]


def test_flop_accounting():
  args = bench_train.parse_args(["--tiny"])
  cfg = bench_train.model_config(args)
  full = bench_train.step_flops(cfg, "sft", False, 4, 32)
  lora = bench_train.step_flops(cfg, "sft", True, 4, 32)
  dpo = bench_train.step_flops(cfg, "dpo", False, 4, 32)
  n = bench_train.matmul_params(cfg)
  attn = bench_train.attention_flops(cfg, 4, 32)
  assert full["total"] == 6 * n * 128 + 3 * attn
  assert lora["total"] == 4 * n * 128 + 3 * attn
  assert dpo["total"] == full["total"] + 2 * n * 128 + attn


def test_train_bench_compares_logits_chunks_side_by_side():
  out = bench_train.main(["--tiny", "--repeats", "1", "--variants", "sft", "--in-process",
                          "--logits-chunk", "0,24"])
  rows = out["variants"]
  assert set(rows) == {"sft/chunk0", "sft/chunk24"}
  assert [rows[k]["logits_chunk"] for k in ("sft/chunk0", "sft/chunk24")] == [0, 24]
  # Same weights and batch: the first step's loss does not depend on the chunking.
  assert math.isclose(rows["sft/chunk0"]["loss"], rows["sft/chunk24"]["loss"], rel_tol=1e-5)
  assert all(_positive(r["tokens_per_s"]) and _positive(r["peak_rss_mb"]) for r in rows.values())


def test_bf16_compute_and_mfu_against_a_stated_peak():
  common = ["--tiny", "--repeats", "1", "--variants", "sft", "--in-process"]
  f32 = bench_train.main(common)["variants"]["sft"]
  out = bench_train.main(common + ["--dtype", "bfloat16", "--peak-tflops", "0.002"])
  bf16 = out["variants"]["sft"]
  assert out["workload"]["dtype"] == "bfloat16" and bf16["dtype"] == "bfloat16"
  assert f32["mfu_vs_stated_peak"] is None
  assert math.isclose(bf16["mfu_vs_stated_peak"], bf16["gflops"] / 1e3 / 0.002, rel_tol=1e-9)
  assert out["targets"]["sft_mfu_vs_stated_peak"]["measured"] == bf16["mfu_vs_stated_peak"]
  assert _positive(bf16["mfu"]) and _positive(bf16["matmul_peak_gflops"])
  # Same weights and batch: bf16 compute moves the first loss only by rounding.
  assert f32["loss"] != bf16["loss"]
  assert math.isclose(f32["loss"], bf16["loss"], rel_tol=2e-2)


def test_published_architectures_by_name():
  args = bench_train.parse_args(["--model", "llama3.2-1b", "--dtype", "bfloat16"])
  cfg = bench_train.model_config(args)
  assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == (2048, 16, 128256)
  assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "float32")
  assert abs(cfg.num_params - 1.236e9) < 0.01e9
  for bad in (["--model", "gpt-5"], ["--model", "llama3.2-1b", "--hidden", "64"]):
    with pytest.raises(SystemExit):
      bench_train.parse_args(bad)
