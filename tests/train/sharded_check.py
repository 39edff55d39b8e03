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
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from rankjax import parallel, testing, train  # noqa: E402
from rankjax.config import OptimCfg  # noqa: E402
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


def rel(a, b):
  return max(float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  assert jax.device_count() == 8, jax.device_count()
  single = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  sharded = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  cases = {
      "sft": (train.sft_step, lm_batch(b=8, seed=3), dict(with_reference=False, accum_steps=2)),
      "dpo": (train.dpo_step, pref_batch(b=8, seed=4), dict(with_reference=True, beta=0.1)),
  }
  out = {}
  for name, (fn, batch, kw) in cases.items():
    p1, l1, _ = run(single, fn, batch, **kw)
    p8, l8, spec = run(sharded, fn, batch, **kw)
    out[name] = {"params_rel": rel(p8, p1),
                 "loss_rel": float(np.max(np.abs(l8 - l1) / np.abs(l1))),
                 "q_spec": spec, "losses": l1[::2].tolist()}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
