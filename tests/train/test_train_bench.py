"""Smoke test of `python -m rankjax.bench train` at a tiny size: it runs end
to end (variants in subprocesses) and reports every figure. It checks the
report, not speed."""

import json
import math

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
