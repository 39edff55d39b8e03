"""Run by test_sampling_sharded.py in a subprocess with 8 fake CPU devices:
sampling (greedy, top-p with a group of 2, beam search) with the model on one
device and with it sharded over a (data 2, fsdp 2, tensor 2) mesh, plus the
pure `sample_loop` with the prompts sharded over data x fsdp. Prints one JSON
line with the tokens and log-probs of each."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from rankjax import parallel, sampling, testing  # noqa: E402

PROMPTS = [[5, 9, 3], [7, 1, 4, 4, 8, 2], [11], [3, 3, 6, 9]]


def run(model):
  out = {}
  for name, kw in {"greedy": dict(temperature=0.0),
                   "top_p": dict(temperature=1.0, top_p=0.9, num_samples=2)}.items():
    cfg = sampling.SamplingConfig(max_new_tokens=8, **kw)
    res = sampling.generate(model, PROMPTS, cfg, rng=jax.random.key(3))
    out[name] = {"tokens": np.asarray(res.tokens).tolist(),
                 "logprobs": np.asarray(res.logprobs).tolist()}
  beam = sampling.beam_search(model, PROMPTS, num_beams=3, max_new_tokens=6)
  out["beam"] = {"tokens": np.asarray(beam.all_tokens).tolist(),
                 "logprobs": np.asarray(beam.all_scores).tolist()}
  return out


def run_loop(model, mesh=None):
  """sample_loop inside the caller's own jit, the prompts sharded on a mesh."""
  tokens, mask, _ = sampling.pad_prompts(PROMPTS, model.config.vocab_size, pad_id=0)
  params = sampling.SamplingConfig(temperature=1.0, top_k=20).row_params(len(PROMPTS) * 2)
  graphdef, state = nnx.split(model)

  @jax.jit
  def loop(state, tokens, mask, params):
    return sampling.sample_loop(nnx.merge(graphdef, state), tokens, mask, params,
                                jax.random.key(4), num_samples=2, max_new_tokens=8, eos_ids=())
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  if mesh is not None:
    tokens, mask = parallel.shard_batch((tokens, mask), mesh)
  res = loop(state, tokens, mask, params)
  return {"tokens": np.asarray(res.tokens).tolist(), "logprobs": np.asarray(res.logprobs).tolist()}


def main():
  assert jax.device_count() == 8, jax.device_count()
  single = run(testing.tiny_model("llama", seed=0))
  single["loop"] = run_loop(testing.tiny_model("llama", seed=0))
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = parallel.shard_model(testing.tiny_model("llama", seed=0), mesh)
  spec = str(model.layers.q[...].sharding.spec)
  sharded = run(model)
  sharded["loop"] = run_loop(model, mesh)
  print(json.dumps({"single": single, "sharded": sharded, "q_spec": spec}))


if __name__ == "__main__":
  main()
