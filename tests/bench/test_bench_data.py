"""Smoke test of `python -m rankjax.bench data` (a program, not a timed test)."""

import os

from rankjax.bench import data as bench_data


def test_data_benchmark_reports_rates(monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  result = bench_data.main(["--batches", "5", "--repeats", "1", "--examples", "2000"])
  for layout in ("padded", "packed"):
    r = result[layout]
    assert r["loader"]["examples_per_s"] > 0 and r["sft_step"]["steps_per_s"] > 0
    assert r["loader_over_step"] > 0
