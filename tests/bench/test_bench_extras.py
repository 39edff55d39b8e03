"""The comparisons' reference libraries (torch, transformers, TRL, datasets)
come from the `bench` extra, not the base install: a benchmark that needs
them and does not find them says which extra installs them."""

import importlib.util

import pytest

from rankjax.bench import grpo as bench_grpo
from rankjax.bench import sampler as bench_sampler


@pytest.fixture
def without(monkeypatch):
  """Make `find_spec` report the given top-level modules as not installed."""
  def hide(*names):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in names else real(name, *a))
  return hide


def test_sampler_comparison_names_the_bench_extra(without):
  without("torch", "transformers")
  with pytest.raises(SystemExit, match=r"torch, transformers not installed: "
                                       r"pip install -e '\.\[bench\]'"):
    bench_sampler.main(["--tiny"])


def test_trl_child_names_the_bench_extra(without, tmp_path):
  without("trl", "datasets")
  with pytest.raises(SystemExit, match=r"datasets, trl not installed: pip install -e '\.\[bench\]'"):
    bench_grpo.main(["--trl-child", str(tmp_path / "spec.json")])
