"""The optimizer from `OptimCfg`: AdamW, warmup then decay, global-norm clipping.

Gradient accumulation is not an optax wrapper here: the train step scans
over micro-batches itself (see `_steps.compute_grads`), so one jitted call
is one optimizer update and the schedule counts real updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rankjax.config import OptimCfg


def make_schedule(cfg: OptimCfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then cosine/linear decay to 0
  at `total_steps`, or constant."""
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(lr, 0.0, decay_steps)
  else:
    decay = optax.constant_schedule(lr)
  if warmup == 0:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


# A parameter with one of these logical axes is a matrix (projection,
# embedding, head or adapter); the rest are norms' gains and biases.
_MATRIX_AXES = frozenset({"embed", "mlp", "vocab", "lora_rank"})


def decay_mask(params: nnx.State) -> nnx.State:
  """True for matrices, False for norm gains and biases: decaying a gain
  pulls it toward 0, which is not a simpler function."""
  def one(var):
    axes = var.get_metadata().get("logical_axes") or ()
    return var.replace(bool(_MATRIX_AXES.intersection(axes)))
  return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(cfg: OptimCfg, total_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm (when max_grad_norm > 0) -> AdamW(schedule)."""
  adamw = optax.adamw(make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2,
                      eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
  if cfg.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)
  return adamw


def global_norm(tree) -> jax.Array:
  return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))
