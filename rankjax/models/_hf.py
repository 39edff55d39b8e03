"""Hugging Face checkpoints: `config.json` + safetensors in, and back out.

Only safetensors are read: nothing is ever unpickled. The mapping between HF
tensor names and rankjax parameters is one table; each entry says how the
HF `[out, in]` Linear layout is reshaped into the einsum layout used here.
`from_hf_tensors` is the one assembly path from HF-named arrays to a
Transformer; GGUF files (`_gguf.py`) reach it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from rankjax.errors import UserInputError
from rankjax.models._config import ModelConfig, config_from_hf, config_to_hf
from rankjax.models._transformer import Transformer, create_abstract


class CheckpointError(UserInputError):
  """A Hugging Face directory that cannot be loaded (names the tensor/file)."""


# Weights that only torch.load (pickle) reads.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
_INDEX = "model.safetensors.index.json"
_GGUF_MAGIC = b"GGUF"


def check_checkpoint_dir(path: str | os.PathLike) -> Path:
  """Checks that `path` is a checkpoint rankjax can read: a directory that
  holds config.json and safetensors weights (pickled weights are refused,
  never loaded), or a `.gguf` file (`from_gguf`). Cheap: no tensor is
  opened. Run it before anything else reads the checkpoint (the tokenizer),
  so the error names the real problem.

  Raises:
    CheckpointError: naming the path and what is missing.
  """
  path = Path(path)
  if path.suffix.lower() == ".gguf":
    return _check_gguf_file(path)
  if not path.is_dir():
    raise CheckpointError(f"{path}: no such directory (expected a Hugging Face model directory)")
  if not (path / _INDEX).exists() and not any(path.glob("*.safetensors")):
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
      raise CheckpointError(
          f"{path}: found {', '.join(pickles)} but no *.safetensors: pickled weights are "
          "never loaded (rankjax reads safetensors only and never unpickles). Convert once "
          "with transformers: AutoModelForCausalLM.from_pretrained(dir)"
          ".save_pretrained(out_dir, safe_serialization=True)")
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    hint = f" (found {', '.join(ggufs)}: pass the .gguf file itself)" if ggufs else ""
    raise CheckpointError(f"{path}: no *.safetensors files{hint}")
  if not (path / "config.json").exists():
    raise CheckpointError(f"{path}: no config.json (expected a Hugging Face model directory)")
  return path


def _check_gguf_file(path: Path) -> Path:
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file (expected a GGUF file)")
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != _GGUF_MAGIC:
    raise CheckpointError(
        f"{path}: not a GGUF file (it starts with {magic!r}, not {_GGUF_MAGIC!r})")
  return path


# (hf name, rankjax path, kind). `{i}` marks per-layer tensors that are
# stacked on the leading L axis. kinds:
#   copy      same layout
#   in        HF [out, in] Linear -> ours [in(D), *out]
#   out       HF [out(D), in] Linear -> ours [*in, D]
#   bias      HF [out] -> ours [*out]
_LAYER_TABLE = (
    ("model.layers.{i}.input_layernorm.weight", "attn_norm", "copy"),
    ("model.layers.{i}.self_attn.q_proj.weight", "q", "in"),
    ("model.layers.{i}.self_attn.k_proj.weight", "k", "in"),
    ("model.layers.{i}.self_attn.v_proj.weight", "v", "in"),
    ("model.layers.{i}.self_attn.o_proj.weight", "o", "out"),
    ("model.layers.{i}.self_attn.q_proj.bias", "q_bias", "bias"),
    ("model.layers.{i}.self_attn.k_proj.bias", "k_bias", "bias"),
    ("model.layers.{i}.self_attn.v_proj.bias", "v_bias", "bias"),
    ("model.layers.{i}.self_attn.q_norm.weight", "q_norm", "copy"),
    ("model.layers.{i}.self_attn.k_norm.weight", "k_norm", "copy"),
    ("model.layers.{i}.post_attention_layernorm.weight", "mlp_norm", "copy"),
    ("model.layers.{i}.mlp.gate_proj.weight", "gate", "in"),
    ("model.layers.{i}.mlp.up_proj.weight", "up", "in"),
    ("model.layers.{i}.mlp.down_proj.weight", "down", "out"),
)
_TOP_TABLE = (
    ("model.embed_tokens.weight", "embed", "copy"),
    ("model.norm.weight", "final_norm", "copy"),
    ("lm_head.weight", "lm_head", "in"),
    ("score.weight", "score", "in"),
)


def _np_dtype(name: str) -> np.dtype:
  return np.dtype(jnp.dtype(name))  # jnp knows bfloat16 (via ml_dtypes)


def _to_ours(x: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  if kind == "in":
    return x.T.reshape(shape)
  if kind == "out":
    return x.T.reshape(shape)
  return x.reshape(shape)


def _to_hf(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "in":
    return x.reshape(x.shape[0], -1).T
  if kind == "out":
    return x.reshape(-1, x.shape[-1]).T
  return x.reshape(-1) if kind == "bias" else x


def _expected_hf_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  if kind == "in":
    return (int(np.prod(shape[1:])), shape[0])
  if kind == "out":
    return (shape[-1], int(np.prod(shape[:-1])))
  return (int(np.prod(shape)),) if kind == "bias" else shape


def _entries(model_state: dict, cfg: ModelConfig) -> Iterator[tuple[str, tuple, str, int | None]]:
  """(hf name, our path, kind, layer or None) for every parameter present."""
  for hf, ours, kind in _TOP_TABLE:
    if ours in model_state:
      yield hf, (ours,), kind, None
  for hf, ours, kind in _LAYER_TABLE:
    if ours in model_state["layers"]:
      for i in range(cfg.num_layers):
        yield hf.format(i=i), ("layers", ours), kind, i


class _TensorReader:
  """Lazily reads tensors from one or several safetensors files."""

  def __init__(self, path: Path):
    index = path / _INDEX
    if index.exists():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
      self.files = {name: path / f for name, f in weight_map.items()}
      for f in set(self.files.values()):
        if not f.exists():
          raise CheckpointError(f"{index} names {f.name}, which does not exist")
    else:
      self.files = {}
      for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="numpy") as h:
          for name in h.keys():
            self.files[name] = f
    self._handles = {}

  def names(self) -> set[str]:
    return set(self.files)

  def get(self, name: str) -> np.ndarray:
    f = self.files[name]
    if f not in self._handles:
      self._handles[f] = safe_open(f, framework="numpy")
    return self._handles[f].get_tensor(name)


def load_config(path: str | os.PathLike, **overrides) -> ModelConfig:
  path = Path(path)
  cfg_file = path / "config.json"
  if not cfg_file.exists():
    raise CheckpointError(f"{path}: no config.json (expected a Hugging Face model directory)")
  try:
    hf = json.loads(cfg_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_file}: invalid JSON ({e})") from e
  try:
    return config_from_hf(hf, **overrides)
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"{cfg_file}: {e}") from e


def dtype_overrides(dtype, param_dtype, overrides: dict) -> dict:
  """ModelConfig overrides for a compute dtype and an optional parameter
  dtype (default: the compute dtype)."""
  dtype = jnp.dtype(dtype).name
  return dict(overrides, dtype=dtype, param_dtype=jnp.dtype(param_dtype or dtype).name)


def from_pretrained(path: str | os.PathLike, dtype=jnp.float32, *,
                    param_dtype=None, num_labels: int | None = None,
                    seed: int = 0, **overrides) -> Transformer:
  """Load a Hugging Face Llama/Qwen2/Qwen3 directory.

  dtype: compute dtype (and parameter dtype unless `param_dtype` is given).
  num_labels: add a freshly initialised scalar head to a causal LM (e.g. a
    reward model or critic initialised from an SFT model).
  """
  if Path(path).suffix.lower() == ".gguf":
    raise CheckpointError(f"{path}: a GGUF file; load it with models.from_gguf")
  path = check_checkpoint_dir(path)
  cfg = load_config(path, **dtype_overrides(dtype, param_dtype, overrides))
  return from_hf_tensors(cfg, _TensorReader(path), path, num_labels=num_labels, seed=seed)


def from_hf_tensors(cfg: ModelConfig, reader, source: str | os.PathLike, *,
                    num_labels: int | None = None, seed: int = 0) -> Transformer:
  """Builds the Transformer for `cfg` from HF-named arrays.

  The one assembly path for every checkpoint format: `reader` has
  `names() -> set[str]` (HF tensor names, e.g. `model.layers.0.mlp.up_proj.weight`)
  and `get(name) -> np.ndarray` in the HF layout. Each tensor is read once,
  reshaped by the name table and cast to `cfg.param_dtype`; missing,
  misshapen and unexpected tensors raise CheckpointError naming `source`.
  """
  fresh_head = num_labels is not None and cfg.num_labels == 0
  if fresh_head:
    cfg = cfg.replace(num_labels=num_labels)
  names = reader.names()
  abstract = create_abstract(cfg)
  graphdef, state = nnx.split(abstract)
  pure = nnx.to_pure_dict(state)
  if fresh_head:
    init_model = Transformer(cfg.replace(num_labels=num_labels), rngs=nnx.Rngs(params=seed))
    pure["score"] = np.asarray(init_model.score[...])

  used = set()
  stacks: dict[tuple, np.ndarray] = {}
  for hf_name, ours, kind, layer in _entries(pure, cfg):
    if ours == ("score",) and fresh_head:
      continue
    if hf_name not in names:
      if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
        continue
      raise CheckpointError(
          f"{source}: missing tensor {hf_name!r} for {cfg.model_type} "
          f"(rankjax parameter {'/'.join(ours)})")
    target = pure[ours[0]] if len(ours) == 1 else pure[ours[0]][ours[1]]
    shape = tuple(target.shape[1:]) if layer is not None else tuple(target.shape)
    x = reader.get(hf_name)
    want = _expected_hf_shape(shape, kind)
    if tuple(x.shape) != want:
      raise CheckpointError(f"{source}: tensor {hf_name!r} has shape {tuple(x.shape)}, "
                            f"expected {want} for this config")
    used.add(hf_name)
    value = _to_ours(x, kind, shape).astype(_np_dtype(cfg.param_dtype))
    if layer is None:
      stacks[ours] = value
    else:
      if ours not in stacks:
        stacks[ours] = np.empty(target.shape, dtype=_np_dtype(cfg.param_dtype))
      stacks[ours][layer] = value
  # Tied checkpoints sometimes still carry lm_head.weight: accept it silently
  # only if it equals the embedding (it is then the same tensor).
  ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
  unexpected = {n for n in names - used - ignorable
                if not n.endswith("rotary_emb.inv_freq")}
  if unexpected:
    raise CheckpointError(
        f"{source}: unexpected tensors for {cfg.model_type} "
        f"({'causal LM' if cfg.lm_head else 'sequence classification'}): "
        f"{', '.join(sorted(unexpected)[:8])}{' ...' if len(unexpected) > 8 else ''}")
  for ours, value in stacks.items():
    if len(ours) == 1:
      pure[ours[0]] = jnp.asarray(value)
    else:
      pure[ours[0]][ours[1]] = jnp.asarray(value)
  if fresh_head:
    pure["score"] = jnp.asarray(pure["score"], cfg.param_dtype)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x))


def save_pretrained(model: Transformer, path: str | os.PathLike, *,
                    max_shard_bytes: int = 4 << 30, dtype=None) -> None:
  """Write `config.json` + safetensors (sharded with an index when large)."""
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  cfg = model.config
  if dtype is not None:
    cfg = cfg.replace(param_dtype=jnp.dtype(dtype).name)
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  tensors: dict[str, np.ndarray] = {}
  for hf_name, ours, kind, layer in _entries(pure, cfg):
    x = pure[ours[0]] if len(ours) == 1 else pure[ours[0]][ours[1]]
    x = _np(x if layer is None else x[layer])
    if not np.all(np.isfinite(x.astype(np.float32))):
      raise ValueError(f"refusing to export non-finite values in {hf_name}")
    tensors[hf_name] = np.ascontiguousarray(_to_hf(x, kind).astype(_np_dtype(cfg.param_dtype)))
  (path / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, x in tensors.items():
    if size and size + x.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = x
    size += x.nbytes
  meta = {"format": "pt"}
  if len(shards) == 1:
    save_file(shards[0], path / "model.safetensors", metadata=meta)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, path / fname, metadata=meta)
    weight_map.update({name: fname for name in shard})
  index = {"metadata": {"total_size": sum(x.nbytes for x in tensors.values())},
           "weight_map": weight_map}
  (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

