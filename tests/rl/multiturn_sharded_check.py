"""Run by test_multiturn_rl.py in a subprocess with 8 fake CPU devices:
multi-turn `sample_loop` inside the caller's jit with the calculator env
(traceable, and host through io_callback), once on one device and once with
the prompts and their example_index sharded over a data=8 mesh. Prints one
JSON line with each run's tokens, generated mask, turns and log-probs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import dataclasses  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from rankjax import envs, parallel, sampling, testing  # noqa: E402
from rankjax.tokenizer import CharTokenizer  # noqa: E402

TOK = CharTokenizer()
LIMITS = envs.Limits(max_turns=3, turn_max_tokens=4, max_observation_tokens=12)
PROMPTS = ["12+34=", "7*8=", "100-1=", "5+5=", "9*9=", "31-4=", "2+2=", "66*3="]
N = 32


def run(env, mesh=None):
  model = testing.tiny_model("llama", vocab_size=TOK.vocab_size, seed=0)
  ids = [TOK.encode(p, add_bos=True) for p in PROMPTS]
  tokens, mask, _ = sampling.pad_prompts(ids, model.config.vocab_size, pad_id=TOK.pad_id)
  index = jnp.arange(len(PROMPTS), dtype=jnp.int32)
  params = sampling.SamplingConfig(temperature=1.0).row_params(len(PROMPTS) * 2)
  graphdef, state = nnx.split(model)

  @jax.jit
  def loop(state, tokens, mask, index, params):
    return sampling.sample_loop(nnx.merge(graphdef, state), tokens, mask, params,
                                jax.random.key(7), num_samples=2, max_new_tokens=N,
                                eos_ids=(TOK.eos_id,), pad_id=TOK.pad_id, env=env,
                                extras={"example_index": index})
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  if mesh is not None:
    tokens, mask, index = parallel.shard_batch((tokens, mask, index), mesh)
  out = loop(state, tokens, mask, index, params)
  result = {k: np.asarray(getattr(out, k)).tolist()
            for k in ("tokens", "generated", "turns", "logprobs", "lengths", "env_errors")}
  result["token_sharding"] = str(tokens.sharding)
  return result


def main():
  assert jax.device_count() == 8, jax.device_count()
  mesh = parallel.make_mesh({"data": 8})
  records = [{"prompt": p} for p in PROMPTS]
  prefill = dataclasses.replace(LIMITS, observations="prefill")
  make = {"traceable": lambda: envs.calculator(TOK, LIMITS),
          "host": lambda: envs.host(envs.HostCalculator(), TOK, records, LIMITS),
          # Observations prefilled as chunks: per-row cache writes on a sharded batch.
          "prefill": lambda: envs.calculator(TOK, prefill)}
  result = {}
  for kind, env in make.items():
    result[kind] = {"single": run(env()), "sharded": run(env(), mesh)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
