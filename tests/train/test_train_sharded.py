"""Sharded == unsharded: train steps and GRPO's group-shared log-probs (and
their gradient) on 8 fake CPU devices (data 2, fsdp 2, tensor 2) match one
device. Runs in a subprocess because the device count
is fixed when jax starts."""

import os

from multidevice import run_on_8_devices


def test_sharded_steps_match_single_device():
  result = run_on_8_devices(os.path.join(os.path.dirname(__file__), "sharded_check.py"))
  for name, r in result.items():
    # The sharded run really shards: q's embed axis on fsdp, heads on tensor.
    assert "fsdp" in r["q_spec"] and "tensor" in r["q_spec"], r
    assert r["params_rel"] < 1e-5, (name, r)
    assert r["loss_rel"] < 1e-5, (name, r)
    if "losses" in r:  # the train steps (not the log-prob-only GRPO case)
      assert r["losses"][-1] < r["losses"][0], (name, r)
  assert "grpo_completion_logps" in result
