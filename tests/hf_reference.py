"""Tiny random Hugging Face models (torch, f32) for parity tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from rankjax.testing import tiny_config
from rankjax.models import config_to_hf

_CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              transformers.LlamaForSequenceClassification),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              transformers.Qwen2ForSequenceClassification),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              transformers.Qwen3ForSequenceClassification),
}


def hf_config(family: str, **overrides):
  cfg_cls = _CLASSES[family][0]
  d = config_to_hf(tiny_config(family, **overrides))
  d.pop("architectures")
  d.pop("torch_dtype")
  return cfg_cls(**d)


def make_hf_model(family: str, seed: int = 0, classifier: bool = False, **overrides):
  """A random transformers model; norms and biases are randomised too so a
  mapping bug cannot hide behind ones/zeros."""
  torch.manual_seed(seed)
  cfg = hf_config(family, **overrides)
  if classifier:
    cfg.num_labels = 1
  cls = _CLASSES[family][2 if classifier else 1]
  model = cls(cfg).to(torch.float32).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
      else:
        p.copy_(0.05 * torch.randn_like(p))
  return model


def hf_logits(hf, tokens, mask):
  """float32 logits of a transformers model on right- or left-padded rows,
  positions counted over the mask (as rankjax's default positions)."""
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
             position_ids=torch.tensor(pos))
  return out.logits.float().numpy()
