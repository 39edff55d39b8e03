"""Device meshes and the one sharding table.

Every parameter carries logical axis names (`logical_axes` metadata on its
`nnx.Param`); `RULES` maps each logical name to mesh axes. A dimension that
the mesh axes do not divide is replicated instead (e.g. 2 KV heads on a
tensor axis of 4), so one table works from 1 CPU to a pod slice.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with sharded
parameters and optimizer state), `tensor` (Megatron-style model parallel).

One dispatch rule: the host never has two *independent* multi-device
programs in flight at once. XLA:CPU runs each device's part of a program as
a task on one worker pool with one worker per device, and a collective
holds its worker until every participant has arrived: two independent
collective programs in flight can split the workers between them, each
waiting for parts queued behind the other, and the process aborts after
the rendezvous timeout. (On GPUs
the same overlap, from two threads, deadlocks NCCL.) Steps that consume the
previous step's state are ordered by that data; everything else is either
one jitted program (`checkpoint.all_finite`, `models.merge_lora`) or waited
for before the next is dispatched (`settled`). Only the main thread
dispatches device work.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None = replicated). Activations use the same
# names: `batch` for the leading example axis.
RULES: Mapping[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
    "length": None,
    "cache_seq": None,
    # LoRA rank stays whole: adapters are tiny.
    "lora_rank": None,
}


def mesh_shape(sizes: Mapping[str, int] | Any, num_devices: int) -> tuple[int, ...]:
  """Resolve a {data, fsdp, tensor} size map (or MeshCfg); -1 fills the rest."""
  get = sizes.get if isinstance(sizes, Mapping) else lambda k, d=1: getattr(sizes, k, d)
  shape = [int(get(a, 1)) for a in AXES]
  fill = [i for i, s in enumerate(shape) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {dict(zip(AXES, shape))}")
  known = math.prod(s for s in shape if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices are not divisible by {known} "
                       f"({dict(zip(AXES, shape))})")
    shape[fill[0]] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh {dict(zip(AXES, shape))} needs {math.prod(shape)} devices, "
                     f"{num_devices} available")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int] | Any = None, devices: Sequence | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(sizes or {"data": -1}, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def spec_for(shape: Sequence[int], logical_axes: Sequence[str | None] | None, mesh: Mesh,
             rules: Mapping[str, Any] = RULES) -> P:
  """PartitionSpec for one array from its logical axes and the rules table."""
  if logical_axes is None:
    return P()
  used: set[str] = set()
  out = []
  for dim, name in zip(shape, logical_axes):
    target = rules.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    # Keep mesh axes that exist, are unused and (together) divide the dim.
    axes = tuple(a for a in axes if a in mesh.shape and a not in used and mesh.shape[a] > 1)
    while axes and dim % math.prod(mesh.shape[a] for a in axes):
      axes = axes[:-1]
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh, rules: Mapping[str, Any] = RULES):
  """NamedShardings for an nnx.State (abstract or concrete), same structure."""
  def one(var):
    axes = var.get_metadata().get("logical_axes")
    return var.replace(NamedSharding(mesh, spec_for(var.shape, axes, mesh, rules)))
  return jax.tree.map(one, state, is_leaf=_is_var)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Mapping[str, Any] = RULES) -> nnx.Module:
  """Place an existing model's parameters on the mesh (in place)."""
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model


def create_sharded(make_model, mesh: Mesh, rules: Mapping[str, Any] = RULES):
  """Build a model directly into its shardings.

  `make_model()` is traced abstractly first (`nnx.eval_shape`), then run under
  `jax.jit` with `out_shardings`, so no host ever holds the full weights.
  """
  abstract = nnx.eval_shape(make_model)
  graphdef, abs_state = nnx.split(abstract)
  shardings = state_shardings(abs_state, mesh, rules)

  @jax.jit
  def init():
    state = nnx.state(make_model())
    return jax.lax.with_sharding_constraint(state, shardings)

  with jax.set_mesh(mesh):
    state = init()
  return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh):
  return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x))), batch)


def bytes_per_device(state, mesh: Mesh, rules: Mapping[str, Any] = RULES) -> int:
  """Largest per-device footprint of an (abstract) state under the rules."""
  total = 0
  for var in jax.tree.leaves(state, is_leaf=_is_var):
    if not _is_var(var):
      continue
    spec = spec_for(var.shape, var.get_metadata().get("logical_axes"), mesh, rules)
    shards = 1
    for entry in spec:
      for a in (entry,) if isinstance(entry, str) else (entry or ()):
        shards *= mesh.shape[a]
    total += math.prod(var.shape) * np.dtype(var.dtype).itemsize // shards
  return total


def settled(tree):
  """`tree` once every array in it is computed: call it on the output of a
  program whose successors do not consume it (evaluation batches, reports),
  so the next independent program is not dispatched while it runs (see the
  module docstring)."""
  return jax.block_until_ready(tree)
