"""Tiny models for tests and notebooks: build in well under a second."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankjax.models import ModelConfig, RopeConfig, Transformer, create

# One tiny config per supported family, each exercising what is special about
# it: llama3 rope scaling + untied head; qwen2 q/k/v bias + tied embeddings;
# qwen3 q/k norm + head_dim independent of hidden_size.
_FAMILIES = {
    "llama": dict(model_type="llama", attention_bias=False, qk_norm=False,
                  tie_word_embeddings=False, head_dim=16,
                  rope=RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0,
                                  low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=32)),
    "qwen2": dict(model_type="qwen2", attention_bias=True, qk_norm=False,
                  tie_word_embeddings=True, head_dim=16,
                  rope=RopeConfig(theta=1000000.0)),
    "qwen3": dict(model_type="qwen3", attention_bias=False, qk_norm=True,
                  tie_word_embeddings=False, head_dim=24,
                  rope=RopeConfig(theta=1000000.0)),
}
FAMILIES = tuple(_FAMILIES)


def tiny_config(family: str = "llama", *, vocab_size: int = 128,
                hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                num_kv_heads: int = 2, intermediate_size: int = 128,
                **overrides) -> ModelConfig:
  if family not in _FAMILIES:
    raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
  kw = dict(_FAMILIES[family], vocab_size=vocab_size, hidden_size=hidden_size,
            intermediate_size=intermediate_size, num_layers=num_layers,
            num_heads=num_heads, num_kv_heads=num_kv_heads, rms_norm_eps=1e-6,
            max_position_embeddings=512, bos_token_id=1, eos_token_ids=(2,),
            pad_token_id=0)
  kw.update(overrides)
  return ModelConfig(**kw)


def tiny_model(family: str = "llama", seed: int = 0, **overrides) -> Transformer:
  """A randomly initialised tiny model (float32)."""
  return create(tiny_config(family, **overrides), seed=seed)


def perturbed(model: Transformer, seed: int, scale: float = 0.3) -> Transformer:
  """The model with every parameter moved by N(0, scale^2) noise (drawn on
  the host: no per-shape compiles). The initial weights (0.02 normal, zero
  biases, unit norms) make attention almost uniform and leave q/k/v biases
  at zero, which would hide masking, position and bias mistakes."""
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.RandomState(seed)
  leaves = [jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape).astype(x.dtype))
            for x in leaves]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
