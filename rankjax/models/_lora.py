"""LoRA adapters on the stacked projections (Hu et al. 2021, arXiv 2106.09685).

For a target projection W: [L, in..., out...] (q, k, v, o, gate, up, down)
`apply_lora` adds two `nnx.LoRAParam` variables to `model.layers`:

  <name>_lora_a: [L, in..., r]   uniform(±1/sqrt(fan_in)), as PEFT initialises A
  <name>_lora_b: [L, r, out...]  zeros, so the adapted model starts as the base

and the block computes x·W + (alpha / r)·(x·A)·B (`_transformer._proj`).
Training filters on `nnx.LoRAParam`, so only adapters get gradients and
optimizer state; the base weights are never copied.

  model = models.create(cfg)
  models.apply_lora(model, rank=8, alpha=16, rngs=nnx.Rngs(params=0))
  ...train the LoRAParam state...
  plain = models.merge_lora(model)       # W + (alpha / r)·A·B, no adapters
  models.save_pretrained(plain, out_dir)

The frozen reference of DPO/KTO is the same base with the adapters zeroed
(`zero_lora`), which is exactly the base model: no second copy of weights.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rankjax.models._transformer import Transformer, create_abstract

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# How many axes of each stacked weight (after L) are its inputs.
_NUM_IN_AXES = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}


def lora_targets(model: Transformer) -> tuple[str, ...]:
  """The projections of `model` that carry adapters (empty: no LoRA)."""
  return tuple(t for t in LORA_TARGETS if hasattr(model.layers, f"{t}_lora_a"))


def apply_lora(model: Transformer, rank: int, alpha: float,
               targets: Sequence[str] = LORA_TARGETS, *,
               rngs: nnx.Rngs) -> Transformer:
  """Adds LoRA adapters to `model` in place (and returns it)."""
  if rank <= 0:
    raise ValueError(f"LoRA rank must be > 0, got {rank}")
  unknown = [t for t in targets if t not in LORA_TARGETS]
  if unknown or not targets:
    raise ValueError(f"LoRA targets {tuple(targets)}: choose from {LORA_TARGETS}")
  if lora_targets(model):
    raise ValueError(f"model already has LoRA adapters on {lora_targets(model)}")
  layers = model.layers
  dtype = model.config.param_dtype
  for name in targets:
    w = getattr(layers, name)
    axes = w.get_metadata()["logical_axes"]
    n_in = _NUM_IN_AXES[name]
    in_shape, out_shape = w.shape[1:1 + n_in], w.shape[1 + n_in:]
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(rngs.params(), (w.shape[0], *in_shape, rank),
                           jnp.float32, -bound, bound)
    setattr(layers, f"{name}_lora_a", nnx.LoRAParam(
        a.astype(dtype), logical_axes=(*axes[:1 + n_in], "lora_rank")))
    setattr(layers, f"{name}_lora_b", nnx.LoRAParam(
        jnp.zeros((w.shape[0], rank, *out_shape), dtype),
        logical_axes=(axes[0], "lora_rank", *axes[1 + n_in:])))
  layers.lora_scale = float(alpha) / rank
  return model


def lora_delta(model: Transformer, name: str) -> jax.Array:
  """(alpha / r)·A·B for one target, shaped like its weight [L, in..., out...]."""
  a = getattr(model.layers, f"{name}_lora_a")[...].astype(jnp.float32)
  b = getattr(model.layers, f"{name}_lora_b")[...].astype(jnp.float32)
  n_layers, rank = a.shape[0], a.shape[-1]
  ab = jnp.einsum("LIR,LRO->LIO", a.reshape(n_layers, -1, rank),
                  b.reshape(n_layers, rank, -1))
  return model.layers.lora_scale * ab.reshape(a.shape[:-1] + b.shape[2:])


def merge_lora(model: Transformer) -> Transformer:
  """A plain `Transformer` with W + (alpha / r)·A·B folded in (HF export).

  Returns the model itself when it has no adapters.
  """
  targets = lora_targets(model)
  if not targets:
    return model
  graphdef, state = nnx.split(create_abstract(model.config))
  nnx.replace_by_pure_dict(state, _merged(*nnx.split(model), targets))
  return nnx.merge(graphdef, state)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _merged(graphdef, state, targets):
  # One compiled program for every target's update: on a mesh, a chain of
  # separate sharded matmuls would put several collective programs in
  # flight at once (see `parallel.settled`).
  model = nnx.merge(graphdef, state)
  pure = nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
  for name in targets:
    w = pure["layers"][name]
    # Sum in float32, then back to the parameter dtype.
    pure["layers"][name] = (w.astype(jnp.float32)
                            + lora_delta(model, name)).astype(w.dtype)
  return pure


def zero_lora(lora_state: nnx.State) -> nnx.State:
  """The adapter state with every A and B zeroed: merged with the frozen
  rest it is exactly the base model (the DPO/KTO reference under LoRA)."""
  return jax.tree.map(jnp.zeros_like, lora_state)
