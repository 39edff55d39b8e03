"""Tiny models, single-device meshes and toy batches for the train tests."""

from __future__ import annotations

import jax
import numpy as np

from rankjax import parallel, testing, train
from rankjax.config import OptimCfg

VOCAB = 32
CHOSEN = (10, 11, 12)
REJECTED = (20, 21, 22)


def tiny_model(seed: int = 0, **kw):
  kw = dict(dict(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2,
                 num_kv_heads=1, intermediate_size=64, head_dim=16), **kw)
  return testing.tiny_model("llama", seed=seed, **kw)


def mesh1():
  return parallel.make_mesh({"data": 1}, jax.devices()[:1])


def make_state(model, *, lr=1e-2, steps=100, with_reference=False, mesh=None, **optim):
  mesh = mesh or mesh1()
  tx = train.make_optimizer(OptimCfg(learning_rate=lr, warmup_steps=0, schedule="constant",
                                     **optim), steps)
  state, sh = train.create_train_state(model, tx, mesh, with_reference=with_reference)
  return state, sh, train.batch_sharding(mesh)


def _rows(rows, t):
  """Right-padded tokens/loss_mask/segment_ids/positions from (prompt, completion)."""
  b = len(rows)
  out = {k: np.zeros((b, t), np.int32) for k in ("tokens", "loss_mask", "segment_ids", "positions")}
  for i, (prompt, completion) in enumerate(rows):
    ids = list(prompt) + list(completion)
    n = len(ids)
    out["tokens"][i, :n] = ids
    out["loss_mask"][i, len(prompt):n] = 1
    out["segment_ids"][i, :n] = 1
    out["positions"][i, :n] = np.arange(n)
  return out


def _prompts(rng, b, lo=2, hi=5):
  return [[1] + list(rng.randint(3, 10, rng.randint(lo, hi))) for _ in range(b)]


def lm_batch(seed=0, b=8, t=12):
  """Prompt + completion rows: the completion repeats the prompt's tokens
  (+ EOS), a learnable toy task."""
  rng = np.random.RandomState(seed)
  rows = [(p, p[1:] + [2]) for p in _prompts(rng, b)]
  return _rows(rows, t)


def pref_batch(seed=0, b=8, t=10):
  """Separable preferences: chosen always CHOSEN + EOS, rejected REJECTED + EOS."""
  rng = np.random.RandomState(seed)
  prompts = _prompts(rng, b)
  chosen = _rows([(p, list(CHOSEN) + [2]) for p in prompts], t)
  rejected = _rows([(p, list(REJECTED) + [2]) for p in prompts], t)
  return {**{f"chosen_{k}": v for k, v in chosen.items()},
          **{f"rejected_{k}": v for k, v in rejected.items()}}


def kto_batch(seed=0, b=8, t=10):
  """Alternating desirable (CHOSEN) and undesirable (REJECTED) rows."""
  rng = np.random.RandomState(seed)
  prompts = _prompts(rng, b)
  rows = [(p, list(CHOSEN if i % 2 == 0 else REJECTED) + [2]) for i, p in enumerate(prompts)]
  out = _rows(rows, t)
  out["label"] = (np.arange(b) % 2 == 0).astype(np.int32)
  return out


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))
