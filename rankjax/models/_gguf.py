"""GGUF checkpoints (llama.cpp's files) of the Llama, Qwen2 and Qwen3 families.

A GGUF file holds the config as metadata (`llama.block_count`, ...) and the
weights under llama.cpp's names (`blk.0.attn_q.weight`), most of them
quantized. `from_gguf` turns the metadata into a Hugging Face `config.json`
dict and the tensors into HF-named float arrays, then builds the model with
the code that reads safetensors (`_hf.from_hf_tensors`): one name table, one
layout conversion. Weights are dequantized once, at load time; the model then
runs in `dtype` like any other.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from rankjax.gguf_file import open_gguf
from rankjax.models._config import ModelConfig, config_from_hf
from rankjax.models._hf import (CheckpointError, check_checkpoint_dir, dtype_overrides,
                                from_hf_tensors)
from rankjax.models._transformer import Transformer

GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# ggml tensor types unpacked here (by `gguf.quants.dequantize`): the float
# types and the quantizations llama.cpp's Q*_0/_1 and Q*_K files are made of.
GGUF_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                     "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# llama.cpp tensor name -> HF name (`_hf`'s table takes it from there).
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER = re.compile(r"blk\.(\d+)\.(.+)")
# Llama 3.x rope scaling, which llama.cpp stores as per-frequency factors.
_ROPE_FREQS = "rope_freqs.weight"
# Llama 3.x's llama3 rope settings, tried first when reading rope_freqs.
_LLAMA3_LOW, _LLAMA3_HIGH, _LLAMA3_ORIGINAL = 1.0, 4.0, 8192


def _hf_tensor_name(name: str) -> str | None:
  """The HF name of a llama.cpp tensor name, or None if it has none."""
  if name in _TOP_NAMES:
    return _TOP_NAMES[name]
  m = _LAYER.fullmatch(name)
  if m and m.group(2) in _LAYER_NAMES:
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
  return None


def _open(path: str | os.PathLike):
  """The file's `gguf.GGUFReader` (memory-mapped: no tensor is read), shared
  with the tokenizer's reading of the same file."""
  try:
    return open_gguf(path)
  except (ValueError, KeyError, IndexError) as e:
    raise CheckpointError(f"{path}: cannot be read as GGUF ({type(e).__name__}: {e})") from e


def _field(reader, key: str, default: Any = None) -> Any:
  """A metadata value (str, number, or list for arrays), or `default`."""
  f = reader.fields.get(key)
  return default if f is None else f.contents()


def _per_layer_constant(value, key: str, path) -> int:
  # Some files store a per-layer list; rankjax layers all have one shape.
  if isinstance(value, list):
    if len(set(value)) != 1:
      raise CheckpointError(f"{path}: {key} varies per layer ({value}); not supported")
    value = value[0]
  return int(value)


def _wavelengths(theta: float, head_dim: int) -> np.ndarray:
  return 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def _llama3_factors(theta: float, head_dim: int, factor: float, low: float, high: float,
                    original: float) -> np.ndarray:
  """llama.cpp's rope_freqs (the divisor of each inverse frequency) for
  transformers' llama3 rope scaling; the same rule as `rope_inv_freq`."""
  wavelen = _wavelengths(theta, head_dim)
  smooth = (original / wavelen - low) / (high - low)
  mid = 1.0 / ((1 - smooth) / factor + smooth)
  return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mid))


def _llama3_scaling(freqs: np.ndarray, theta: float, head_dim: int, original, path) -> dict | None:
  """The llama3 `rope_scaling` that reproduces `rope_freqs.weight`.

  The file keeps only the factors. The largest is `factor`; Llama 3.x's
  band edges (low 1, high 4 at 8192 positions) are tried first, then edges
  fitted to the factors between the bands (the smoothing there is linear in
  1/wavelength). Whatever is returned reproduces every factor.
  """
  f = np.asarray(freqs, np.float64).reshape(-1)
  if f.shape != (head_dim // 2,):
    raise CheckpointError(f"{path}: {_ROPE_FREQS} has {f.size} values, expected {head_dim // 2}")
  if np.allclose(f, 1.0):
    return None
  factor = float(f.max())
  original = int(original or _LLAMA3_ORIGINAL)
  candidates = [(_LLAMA3_LOW, _LLAMA3_HIGH)]
  wavelen = _wavelengths(theta, head_dim)
  mid = (f > 1.0 + 1e-6) & (f < factor * (1 - 1e-6))
  if mid.sum() >= 2:
    smooth = (1 / f[mid] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(original / wavelen[mid], smooth, 1)
    low = -intercept / slope
    candidates.append((round(low, 6), round(low + 1 / slope, 6)))
  for low, high in candidates:
    if np.allclose(_llama3_factors(theta, head_dim, factor, low, high, original), f, rtol=1e-4):
      return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
              "high_freq_factor": high, "original_max_position_embeddings": original}
  raise CheckpointError(f"{path}: {_ROPE_FREQS} does not follow llama3 rope scaling; "
                        "other per-frequency rope factors are not supported")


def _rope_scaling(reader, arch: str, theta: float, head_dim: int, path) -> dict | None:
  freqs = next((t for t in reader.tensors if t.name == _ROPE_FREQS), None)
  kind = _field(reader, f"{arch}.rope.scaling.type")
  factor = _field(reader, f"{arch}.rope.scaling.factor",
                  _field(reader, f"{arch}.rope.scale_linear"))
  if freqs is not None:
    return _llama3_scaling(np.asarray(freqs.data, np.float32), theta, head_dim,
                           _field(reader, f"{arch}.rope.scaling.original_context_length"), path)
  if kind == "linear" or (kind is None and factor not in (None, 1.0)):
    return {"rope_type": "linear", "factor": float(factor)}
  if kind not in (None, "none"):
    raise CheckpointError(f"{path}: {arch}.rope.scaling.type {kind!r} is not supported "
                          "(supported: none, linear, and llama3 via rope_freqs.weight)")
  return None


def _hf_config(reader, path) -> dict:
  """The Hugging Face `config.json` dict described by a GGUF's metadata.

  Raises:
    CheckpointError: an architecture other than llama/qwen2/qwen3, a missing
      key, or a shape rankjax does not model (partial rotary, per-layer head
      counts), naming the file.
  """
  arch = _field(reader, "general.architecture")
  if arch not in GGUF_ARCHITECTURES:
    raise CheckpointError(f"{path}: general.architecture {arch!r} is not supported; "
                          f"supported: {', '.join(GGUF_ARCHITECTURES)}")

  def meta(key, default=None):
    return _field(reader, f"{arch}.{key}", default)

  def required(key):
    value = meta(key)
    if value is None:
      raise CheckpointError(f"{path}: no {arch}.{key} in the GGUF metadata")
    return value

  names = {t.name for t in reader.tensors}
  if "token_embd.weight" not in names:
    raise CheckpointError(f"{path}: no token_embd.weight tensor")
  embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
  hidden = int(required("embedding_length"))
  heads = int(required("attention.head_count"))
  head_dim = int(meta("attention.key_length") or hidden // heads)
  for key in ("attention.value_length", "rope.dimension_count"):
    if meta(key) is not None and int(meta(key)) != head_dim:
      raise CheckpointError(f"{path}: {arch}.{key} = {meta(key)} differs from the head dim "
                            f"{head_dim}; not supported")
  theta = float(meta("rope.freq_base", 10000.0))
  eos = [_field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
  return {
      "model_type": arch,
      # The embedding's rows, not len(tokens): files may pad the vocabulary.
      "vocab_size": int(embed.shape[1]),
      "hidden_size": hidden,
      "intermediate_size": _per_layer_constant(required("feed_forward_length"),
                                               f"{arch}.feed_forward_length", path),
      "num_hidden_layers": int(required("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": _per_layer_constant(meta("attention.head_count_kv", heads),
                                                 f"{arch}.attention.head_count_kv", path),
      "head_dim": head_dim,
      "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
      "rope_theta": theta,
      "rope_scaling": _rope_scaling(reader, arch, theta, head_dim, path),
      "max_position_embeddings": int(meta("context_length", 2048)),
      "tie_word_embeddings": "output.weight" not in names,
      "attention_bias": "blk.0.attn_q.bias" in names,
      "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": list(dict.fromkeys(int(e) for e in eos if e is not None)) or None,
      "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
  }


def _unpermute(x: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row order for the llama architecture.

  Its converter interleaves each head's two rotary halves (row pairs
  (0, H/2), (1, H/2 + 1), ...) for its rope kernel; HF (and rankjax) keep
  the halves apart. The same rule as transformers' GGUF loader.
  """
  half = x.shape[0] // n_head // 2
  return x.reshape(n_head, half, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


class _GGUFTensors:
  """HF-named float32 arrays of a GGUF file, dequantized as they are read
  (so only one tensor is ever unpacked at a time)."""

  def __init__(self, reader, path, cfg: ModelConfig):
    self._tensors = {}
    for t in reader.tensors:
      if t.name == _ROPE_FREQS:  # read into the config already
        continue
      hf = _hf_tensor_name(t.name)
      if hf is None:
        raise CheckpointError(f"{path}: tensor {t.name!r} has no counterpart in a "
                              f"{cfg.model_type} model")
      if t.tensor_type.name not in GGUF_TENSOR_TYPES:
        raise CheckpointError(
            f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which rankjax does "
            f"not dequantize; supported: {', '.join(GGUF_TENSOR_TYPES)}")
      self._tensors[hf] = t
    self._heads = ({"q_proj": cfg.num_heads, "k_proj": cfg.num_kv_heads}
                   if cfg.model_type == "llama" else {})

  def names(self) -> set[str]:
    return set(self._tensors)

  def get(self, name: str) -> np.ndarray:
    from gguf.quants import dequantize  # pylint: disable=import-outside-toplevel
    t = self._tensors[name]
    # GGUF lists dims innermost first; numpy (and HF) outermost first.
    shape = tuple(int(n) for n in reversed(t.shape))
    x = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
    heads = self._heads.get(name.split(".")[-2])
    return x if heads is None else _unpermute(x, heads)


def load_gguf_config(path: str | os.PathLike, **overrides) -> ModelConfig:
  """The ModelConfig of a GGUF file (reads metadata only)."""
  path = check_checkpoint_dir(path)
  return _config(_open(path), path, overrides)


def _config(reader, path: Path, overrides: dict) -> ModelConfig:
  try:
    return config_from_hf(_hf_config(reader, path), **overrides)
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"{path}: {e}") from e


def from_gguf(path: str | os.PathLike, dtype=jnp.float32, *, param_dtype=None,
              num_labels: int | None = None, seed: int = 0, **overrides) -> Transformer:
  """Load a llama.cpp GGUF file of the Llama, Qwen2 or Qwen3 family.

  Tensors stored as F32/F16/BF16 or quantized (`GGUF_TENSOR_TYPES`) are
  dequantized to float and cast to `param_dtype`; arguments as for
  `from_pretrained`. The tokenizer is in the same file:
  `tokenizer.load_tokenizer(path)`.

  Raises:
    CheckpointError: an unsupported architecture or tensor type, or a tensor
      that does not fit the metadata, naming the file.
  """
  path = check_checkpoint_dir(path)
  reader = _open(path)
  cfg = _config(reader, path, dtype_overrides(dtype, param_dtype, overrides))
  return from_hf_tensors(cfg, _GGUFTensors(reader, path, cfg), path,
                         num_labels=num_labels, seed=seed)
