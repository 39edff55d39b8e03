"""Run by test_hypernet.py in a subprocess with 8 fake CPU devices: the same
hypernet steps on one device and on a (data 2, fsdp 2, tensor 2) mesh.
Prints one JSON line: the largest relative difference of the trained
hypernetwork parameters (per leaf, in norm), of the losses, and the
sharding of a head."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from rankjax import hypernet, parallel, train  # noqa: E402
from rankjax.config import OptimCfg  # noqa: E402
from hypernet_helpers import nonzero_b_heads, task_batches, tiny_hypernet  # noqa: E402

STEPS = 3


def run(mesh):
  hn = tiny_hypernet()
  nonzero_b_heads(hn)  # so A's head gets gradients too
  # A larger eps than Adam's default: see tests/train/sharded_check.py (Adam
  # amplifies reassociation noise). The A heads get small gradients (through
  # B only): at eps 1e-6 the o_proj A head's relative difference reached
  # 1.6e-5 on an AVX-512 machine (with the suite's compile settings; below
  # 1e-5 on others), at eps 1e-5 2.1e-6 on the same machine.
  tx = train.make_optimizer(OptimCfg(learning_rate=1e-3, warmup_steps=0, weight_decay=0.1,
                                     eps=1e-5), STEPS)
  state, sh = hypernet.create_state(hn.view, hn.net, tx, mesh)
  step = hypernet.jit_hypernet_step(sh, mesh)
  batches = task_batches(hn, tasks_per_step=2, rows_per_task=4)
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, train.put_batch(next(batches), hypernet.batch_shardings(mesh)))
    losses += [float(metrics["loss"]), float(metrics["grad_norm"])]
  spec = str(state.params["net"]["q_lora_a_w"].sharding.spec)
  return jax.device_get(state.params), np.asarray(losses), spec


def rel(a, b):
  return max(float(np.linalg.norm(np.asarray(x) - np.asarray(y))
                   / max(np.linalg.norm(np.asarray(y)), 1e-30))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  assert jax.device_count() == 8, jax.device_count()
  single = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  sharded = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  p1, l1, _ = run(single)
  p8, l8, spec = run(sharded)
  print(json.dumps({"params": rel(p8, p1), "losses": float(np.max(np.abs(l8 - l1) / np.abs(l1))),
                    "head_spec": spec}))


if __name__ == "__main__":
  main()
