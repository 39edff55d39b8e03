"""Run by test_train_sharded.py in a subprocess with 8 fake CPU devices:
the same steps on one device and on a (data 2, fsdp 2, tensor 2) mesh.
Prints one JSON line: per-algorithm max relative differences of the
parameters (per leaf, in norm) and of the losses and gradient norms."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from rankjax import parallel, testing, train  # noqa: E402
from rankjax.config import DPOCfg, OptimCfg  # noqa: E402
from rankjax.train import _grpo  # noqa: E402
from train_helpers import host, lm_batch, pref_batch  # noqa: E402

STEPS = 3


def run(mesh, step_fn, batch, *, with_reference, **hp):
  model = testing.tiny_model("llama", seed=0)
  # eps 1e-6: Adam's g / sqrt(v) maps float32 reassociation noise on
  # near-zero gradient entries to lr-sized differences; a larger eps keeps
  # the comparison about the sharding, not about that amplification.
  tx = train.make_optimizer(OptimCfg(learning_rate=1e-3, warmup_steps=0, weight_decay=0.1,
                                     eps=1e-6), STEPS)
  state, sh = train.create_train_state(model, tx, mesh, with_reference=with_reference)
  bsh = train.batch_sharding(mesh)
  step = train.jit_step(step_fn, sh, bsh, **hp)
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, train.put_batch(batch, bsh))
    losses.append(float(metrics["loss"]))
    losses.append(float(metrics["grad_norm"]))
  q_spec = state.params["layers"]["q"].sharding.spec
  return host(state.params), np.asarray(losses), str(q_spec)


def grouped_logps(mesh):
  """GRPO's group-shared forward (`completion_logps`) and its parameter
  gradient, with the state and a 4-prompt x 2-completion batch sharded."""
  model = testing.tiny_model("llama", seed=0)
  tx = train.make_optimizer(OptimCfg(learning_rate=1e-3, warmup_steps=0), 1)
  state, _ = train.create_train_state(model, tx, mesh)
  rng = np.random.default_rng(5)
  vocab = model.config.vocab_size
  pmask = np.ones((4, 6), bool)
  pmask[1, :2] = pmask[3, :5] = False
  cmask = np.ones((8, 5), bool)
  cmask[2, 3:] = cmask[7, 1:] = False
  batch = train.put_batch(dict(prompt=rng.integers(1, vocab, (4, 6), dtype=np.int32),
                               prompt_mask=pmask, completion_mask=cmask,
                               completion=rng.integers(1, vocab, (8, 5), dtype=np.int32)),
                          train.batch_sharding(mesh))

  def loss(params, b):
    logp = _grpo.completion_logps(state.model(params), b["prompt"], b["prompt_mask"],
                                  b["completion"], b["completion_mask"])
    return jnp.sum(jnp.where(b["completion_mask"], logp, 0.0))

  value, grads = jax.jit(jax.value_and_grad(loss))(state.params, batch)
  return host(grads), np.asarray([float(value)]), str(state.params["layers"]["q"].sharding.spec)


def rel(a, b):
  return max(float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  assert jax.device_count() == 8, jax.device_count()
  single = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  sharded = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  cases = {
      "sft": (train.sft_step, lm_batch(b=8, seed=3), dict(with_reference=False, accum_steps=2)),
      "dpo": (train.dpo_step, pref_batch(b=8, seed=4),
              dict(with_reference=True, hp=DPOCfg(beta=0.1))),
  }
  out = {}
  for name, (fn, batch, kw) in cases.items():
    p1, l1, _ = run(single, fn, batch, **kw)
    p8, l8, spec = run(sharded, fn, batch, **kw)
    out[name] = {"params_rel": rel(p8, p1),
                 "loss_rel": float(np.max(np.abs(l8 - l1) / np.abs(l1))),
                 "q_spec": spec, "losses": l1[::2].tolist()}
  g1, v1, _ = grouped_logps(single)
  g8, v8, spec = grouped_logps(sharded)
  # No training here: "params_rel" compares the parameter gradients and
  # "loss_rel" the summed log-probs.
  out["grpo_completion_logps"] = {"params_rel": rel(g8, g1),
                                  "loss_rel": float(np.max(np.abs(v8 - v1) / np.abs(v1))),
                                  "q_spec": spec}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
