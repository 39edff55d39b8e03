"""Model configuration, read from and written to a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = ("full", "dots_saveable")

_ARCH_SUFFIX = {"lm": "ForCausalLM", "score": "ForSequenceClassification"}
_ARCH_PREFIX = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding; `rope_type` as transformers names it."""
  theta: float = 10000.0
  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One decoder-only transformer covering Llama 3.x, Qwen2/2.5 and Qwen3.

  Family differences are data, not code paths: `attention_bias` (Qwen2 q/k/v
  bias), `qk_norm` (Qwen3 per-head RMSNorm on q and k), `head_dim` (Qwen3
  decouples it from `hidden_size / num_heads`), `rope.rope_type` (llama3
  frequency scaling), `tie_word_embeddings`.
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  model_type: str = "llama"
  rms_norm_eps: float = 1e-5
  rope: RopeConfig = RopeConfig()
  attention_bias: bool = False
  qk_norm: bool = False
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 2048
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  # Heads: the LM head (tied or not) and an optional scalar head (reward
  # model, PPO critic). `num_labels > 0` adds `score: [D, num_labels]`.
  lm_head: bool = True
  num_labels: int = 0
  # Compute dtype of activations; parameters keep `param_dtype`.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Rematerialise each layer in the backward pass (saves activation memory).
  remat: bool = False
  # What a rematerialised layer keeps for its backward: "full" nothing (the
  # whole layer is recomputed); "dots_saveable" its matmul outputs (only
  # norms, activations and softmax are recomputed: more memory, less time).
  remat_policy: str = "full"
  # Tokens per chunk when the train steps turn hidden states into log-probs
  # (`losses.chunked_token_logprobs`): the LM head and log-softmax run chunk
  # by chunk and the backward recomputes each chunk's logits, so no
  # [B, T, V] logits exist. 0 = unchunked (all B·T tokens at once).
  logits_chunk: int = 0

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"model_type {self.model_type!r} is not supported; "
                       f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of "
                       f"num_kv_heads ({self.num_kv_heads})")
    if self.rope.rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(f"rope_type {self.rope.rope_type!r} is not supported; "
                       f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} is not supported; "
                       f"supported: {', '.join(REMAT_POLICIES)}")
    if self.logits_chunk < 0:
      raise ValueError(f"logits_chunk must be >= 0 (0 = unchunked), got {self.logits_chunk}")
    if not self.lm_head and self.num_labels == 0:
      raise ValueError("a model needs an LM head or a scalar head (num_labels > 0)")

  @property
  def num_params(self) -> int:
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    n, k = self.num_heads, self.num_kv_heads
    attn = d * h * (2 * n + 2 * k) + (h * (n + 2 * k) if self.attention_bias else 0)
    layer = attn + 3 * d * f + 2 * d + (2 * h if self.qk_norm else 0)
    head = self.vocab_size * d if self.lm_head and not self.tie_word_embeddings else 0
    return (self.vocab_size * d + self.num_layers * layer + d + head
            + d * self.num_labels)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


def _rope_from_hf(hf: Mapping[str, Any]) -> RopeConfig:
  # transformers >= 5 writes `rope_parameters` (with rope_theta inside);
  # older configs write `rope_theta` and `rope_scaling`.
  params = dict(hf.get("rope_parameters") or {})
  params.update(hf.get("rope_scaling") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  return RopeConfig(
      theta=float(theta),
      rope_type=rope_type,
      factor=float(params.get("factor", 1.0)),
      low_freq_factor=float(params.get("low_freq_factor", 1.0)),
      high_freq_factor=float(params.get("high_freq_factor", 4.0)),
      original_max_position_embeddings=int(params.get(
          "original_max_position_embeddings",
          hf.get("max_position_embeddings", 8192))))


def _eos_tuple(eos) -> tuple[int, ...]:
  if eos is None:
    return ()
  return tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """ModelConfig from a parsed HF `config.json` (dict)."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"config.json: model_type {model_type!r} is not supported; "
                     f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"config.json: hidden_act {act!r} is not supported (only silu)")
  if hf.get("mlp_bias"):
    raise ValueError("config.json: mlp_bias=true is not supported")
  if model_type == "qwen2" and hf.get("use_sliding_window"):
    raise ValueError("config.json: use_sliding_window=true is not supported")
  archs = hf.get("architectures") or []
  is_cls = any(a.endswith("ForSequenceClassification") for a in archs)
  num_heads = int(hf["num_attention_heads"])
  hidden = int(hf["hidden_size"])
  head_dim = hf.get("head_dim") or hidden // num_heads
  kw = dict(
      vocab_size=int(hf["vocab_size"]),
      hidden_size=hidden,
      intermediate_size=int(hf["intermediate_size"]),
      num_layers=int(hf["num_hidden_layers"]),
      num_heads=num_heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
      head_dim=int(head_dim),
      model_type=model_type,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      rope=_rope_from_hf(hf),
      # Qwen2 always has q/k/v bias; Llama has it only if attention_bias.
      attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
      qk_norm=model_type == "qwen3",
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=_eos_tuple(hf.get("eos_token_id")),
      pad_token_id=hf.get("pad_token_id"),
      lm_head=not is_cls,
      num_labels=len(hf.get("id2label") or {0: 0}) if is_cls else 0,
  )
  kw.update(overrides)
  return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The HF `config.json` dict that transformers loads back."""
  head = "lm" if cfg.lm_head else "score"
  rope = {"rope_type": cfg.rope.rope_type, "rope_theta": cfg.rope.theta}
  if cfg.rope.rope_type != "default":
    rope["factor"] = cfg.rope.factor
  if cfg.rope.rope_type == "llama3":
    rope.update(low_freq_factor=cfg.rope.low_freq_factor,
                high_freq_factor=cfg.rope.high_freq_factor,
                original_max_position_embeddings=cfg.rope.original_max_position_embeddings)
  hf = {
      "architectures": [_ARCH_PREFIX[cfg.model_type] + _ARCH_SUFFIX[head]],
      "model_type": cfg.model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps,
      "max_position_embeddings": cfg.max_position_embeddings,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "attention_bias": cfg.attention_bias,
      # Both spellings, so old and new transformers read the rope settings.
      "rope_theta": cfg.rope.theta,
      "rope_parameters": rope,
      "rope_scaling": None if cfg.rope.rope_type == "default" else rope,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": (list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1
                       else (cfg.eos_token_ids[0] if cfg.eos_token_ids else None)),
      "pad_token_id": cfg.pad_token_id,
      "torch_dtype": cfg.param_dtype,
  }
  if cfg.num_labels:
    hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
  if cfg.model_type == "qwen2":
    hf["use_sliding_window"] = False
  return hf
