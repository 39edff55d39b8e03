"""TrainState: the model split into what trains and what does not.

    state = create_train_state(model, tx, mesh, with_reference=True)
    step = jax.jit(sft_step, in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, replicated), donate_argnums=0)

The NNX model is split once on the host: its graph definition is static
(pytree metadata), and its variables become two `nnx.State`s, `params`
(what the optimizer updates: every `nnx.Param`, only the `nnx.LoRAParam`
adapters when the model has LoRA, or any `trainable` filter, e.g. adapters
plus PPO's value head) and `frozen` (the rest). Steps rebuild
the module inside jit with `state.model()`, so they stay pure functions of
arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax import models, parallel


@struct.dataclass
class TrainState:
  """Everything a train step reads and writes (a pytree).

  Attributes:
    graphdef: the model's static structure.
    tx: the optax transformation (static, like flax's TrainState).
    params: trainable variables (float32 master weights under bf16 compute):
      under LoRA the adapters, plus whatever else the `trainable` filter
      of `create_train_state` picked (e.g. a value head).
    frozen: the remaining variables (base weights under LoRA).
    opt_state: optax state of `params`.
    step: int32 updates attempted; skipped (non-finite) updates count too.
    rng: raw uint32[2] PRNG key (checkpoints as a plain array), split every
      step; dropout-free models ignore it.
    ref: frozen copy of the initial `params`, the DPO/KTO reference under
      full fine-tuning; None when there is no reference or under LoRA
      (where the reference is the base: adapters zeroed).
    lora: the model has LoRA adapters, all of them in `params`, and its
      base weights are frozen (static).
  """
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  params: nnx.State
  frozen: nnx.State
  opt_state: Any
  step: jax.Array
  rng: jax.Array
  ref: nnx.State | None = None
  lora: bool = struct.field(pytree_node=False, default=False)

  def model(self, params: nnx.State | None = None) -> models.Transformer:
    """The module with `params` (default: the current ones)."""
    return nnx.merge(self.graphdef, self.params if params is None else params,
                     self.frozen)

  def ref_model(self) -> models.Transformer:
    """The frozen reference: the base with zeroed adapters under LoRA, else
    the initial parameters. No gradient flows into it."""
    if self.lora:
      return self.model(_zero_adapters(self.params))
    if self.ref is None:
      raise ValueError("this TrainState has no reference (build it with "
                       "with_reference=True, or pass reference log-probs in "
                       "the batch)")
    return self.model(jax.lax.stop_gradient(self.ref))


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _zero_adapters(params: nnx.State) -> nnx.State:
  """`params` with every adapter zeroed (the base model); other trainable
  leaves (a value head) are kept, without gradient."""
  adapters, rest = nnx.split_state(params, nnx.LoRAParam, ...)
  return nnx.merge_state(models.zero_lora(adapters), jax.lax.stop_gradient(rest))


def _init(model_state, graphdef, tx, seed, with_reference, lora, trainable):
  model = nnx.merge(graphdef, model_state)
  graphdef, params, frozen = nnx.split(model, trainable, ...)
  # Copies: the step donates its state, so no buffer may be shared with the
  # caller's model or between `params` and `ref`.
  params = jax.tree.map(jnp.copy, params)
  frozen = jax.tree.map(jnp.copy, frozen)
  ref = jax.tree.map(jnp.copy, params) if with_reference and not lora else None
  return TrainState(graphdef=graphdef, tx=tx, params=params, frozen=frozen,
                    opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                    rng=jax.random.PRNGKey(seed), ref=ref, lora=lora)


def tree_shardings(tree, mesh: Mesh):
  """NamedShardings for a pytree holding nnx Variables (sharded by their
  `logical_axes` through `parallel.RULES`) and plain arrays (replicated):
  optimizer moments inherit their parameter's metadata, hence its layout."""
  def one(x):
    if _is_var(x):
      spec = parallel.spec_for(x.shape, x.get_metadata().get("logical_axes"), mesh)
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, tree, is_leaf=_is_var)


def create_train_state(model: models.Transformer, tx: optax.GradientTransformation,
                       mesh: Mesh, *, seed: int = 0,
                       with_reference: bool = False,
                       trainable: nnx.filterlib.Filter | None = None) -> tuple[TrainState, Any]:
  """(state, shardings): the TrainState of `model`, laid out on `mesh`.

  The state is built from abstract shapes first (`jax.eval_shape`), then
  by one jitted init with `out_shardings`, so parameters and optimizer
  moments are created directly in their shards. `with_reference` keeps a
  frozen copy of the initial trainable parameters (DPO/KTO under full
  fine-tuning; LoRA needs none). `trainable` (an nnx filter) picks what
  the optimizer updates; default: the adapters when `model` has LoRA, else
  every `nnx.Param`. Under LoRA it must take every adapter and no base
  weight of the policy (e.g. `nnx.Any(nnx.LoRAParam, nnx.PathContains("score"))`
  also trains PPO's value head).
  """
  init, model_state, abstract = _plan(model, tx, seed, with_reference, trainable)
  shardings = tree_shardings(abstract, mesh)
  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)(model_state)
  return state, shardings


def _plan(model, tx, seed, with_reference, trainable):
  """(init, model state, abstract TrainState) of `create_train_state`."""
  graphdef, model_state = nnx.split(model)
  lora = bool(models.lora_targets(model))
  if trainable is None:
    trainable = nnx.LoRAParam if lora else nnx.Param
  init = lambda s: _init(s, graphdef, tx, seed, with_reference, lora, trainable)
  return init, model_state, jax.eval_shape(init, model_state)


def abstract_train_state(model: models.Transformer, tx: optax.GradientTransformation,
                         mesh: Mesh, *, with_reference: bool = False,
                         trainable: nnx.filterlib.Filter | None = None) -> tuple[TrainState, Any]:
  """(state, shardings) as `create_train_state` would lay them out, with
  `jax.ShapeDtypeStruct` leaves that carry their shardings: nothing is
  allocated, so a step can be lowered and compiled ahead of time for a
  mesh of devices this machine does not have (`bench plan`). `model` may
  itself be abstract (`models.create_abstract`)."""
  _, _, abstract = _plan(model, tx, 0, with_reference, trainable)
  shardings = tree_shardings(abstract, mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, shardings)
  return state, shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """One sharding for every batch array (a pytree prefix): the leading
  example axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def put_batch(batch, sharding):
  """Host numpy batch -> global arrays (each process passes its own rows).
  `sharding`: one NamedSharding for all arrays, or a matching tree."""
  if isinstance(sharding, NamedSharding):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
  return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x),
                      batch, sharding)
