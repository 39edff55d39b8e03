"""Same rng, same tokens on any mesh: greedy, top-p groups, beam search and
the pure sample_loop (prompts sharded over data x fsdp) give the tokens of
one device with the model sharded over 8 fake CPU devices (data 2, fsdp 2,
tensor 2). Runs in a subprocess because the device count is fixed when jax
starts."""

import os

import numpy as np
from multidevice import run_on_8_devices


def test_sharded_sampling_matches_single_device():
  result = run_on_8_devices(os.path.join(os.path.dirname(__file__), "sharded_sampling_check.py"))
  # The model really is sharded: q's embed axis on fsdp, heads on tensor.
  assert "fsdp" in result["q_spec"] and "tensor" in result["q_spec"], result["q_spec"]
  for mode in ("greedy", "top_p", "beam", "loop"):
    one, many = result["single"][mode], result["sharded"][mode]
    np.testing.assert_array_equal(many["tokens"], one["tokens"], err_msg=mode)
    np.testing.assert_allclose(many["logprobs"], one["logprobs"], atol=1e-5, err_msg=mode)
  # The two samples of each top-p group differ somewhere (a real draw).
  top_p = np.asarray(result["single"]["top_p"]["tokens"])
  assert (top_p[0::2] != top_p[1::2]).any()
