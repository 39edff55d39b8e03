"""Checkpoints on orbax: async saves, keep-last-K plus best, exact resume.

A checkpoint holds the whole training state pytree (params, optimizer state,
step, rng) and the data iterator's state, so a resumed run sees exactly the
batches an uninterrupted one would. Saves are asynchronous: the blocking
part is the device-to-host copy; serialisation runs in the background.

Nothing non-finite is ever written: a state with NaN/Inf is refused with a
warning, so the last good checkpoint stays the latest. A latest checkpoint
that fails to restore (corrupted, half-written) falls back to the previous
one with a warning.
"""

from __future__ import annotations

import base64
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rankjax.config import CheckpointCfg

log = logging.getLogger("rankjax.checkpoint")


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_savable(tree):
  # Typed PRNG keys are stored as their raw key data.
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_savable(tree, like):
  return jax.tree.map(
      lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
      if _is_key(ref) else x, tree, like)


def _abstract(tree):
  def one(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
  return jax.tree.map(one, tree)


@jax.jit
def _all_finite(leaves) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree) -> bool:
  """Whether every float leaf of `tree` is finite: one compiled program,
  waited for before anything else is dispatched (see `parallel.settled`)."""
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return True
  return bool(jax.device_get(_all_finite(leaves)))


def _encode_data_state(data_state):
  # grain iterator states are bytes or JSON-able dicts.
  if isinstance(data_state, bytes):
    return {"bytes_b64": base64.b64encode(data_state).decode()}
  return {"json": data_state}


def _decode_data_state(stored):
  if stored is None:
    return None
  if "bytes_b64" in stored:
    return base64.b64decode(stored["bytes_b64"])
  return stored.get("json")


class Manager:
  """Save/restore one stage's state under `directory`."""

  def __init__(self, directory: str | Path, cfg: CheckpointCfg = CheckpointCfg()):
    self.directory = Path(directory).absolute()
    self.cfg = cfg
    policies = [ocp.checkpoint_managers.LatestN(n=cfg.keep)]
    if cfg.best_metric:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[cfg.best_metric], reverse=cfg.best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=cfg.async_save, create=True,
        # best_fn makes orbax store each step's metrics (read by best_step).
        best_fn=(lambda m: m[cfg.best_metric]) if cfg.best_metric else None,
        best_mode=cfg.best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    self._mgr = ocp.CheckpointManager(self.directory, options=options)
    self.last_save_blocking_s = 0.0
    self.refused = 0

  @property
  def steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def save(self, step: int, state, data_state=None, metrics: dict | None = None) -> bool:
    """Save asynchronously; returns False (and writes nothing) if the state is
    not finite."""
    if not all_finite(state):
      self.refused += 1
      log.warning("step %d: state has NaN/Inf; checkpoint not written "
                  "(the last good one is kept)", step)
      return False
    start = time.perf_counter()
    args = ocp.args.Composite(state=ocp.args.StandardSave(_to_savable(state)),
                              data=ocp.args.JsonSave(_encode_data_state(data_state)))
    metrics = {k: float(v) for k, v in (metrics or {}).items()} or None
    self._mgr.save(step, args=args, metrics=metrics, force=True)
    self.last_save_blocking_s = time.perf_counter() - start
    return True

  def restore_or(self, state, data_state=None) -> tuple[Any, Any, int]:
    """(state, data_state, step) from the latest good checkpoint, or the
    given ones and step 0 when there is none."""
    for step in reversed(self.steps):
      try:
        restored = self._restore(step, state)
      except Exception as e:  # corrupted or half-written: try the previous one
        log.warning("checkpoint step %d in %s could not be restored (%s: %s); "
                    "falling back to the previous one", step, self.directory,
                    type(e).__name__, str(e)[:200])
        continue
      return restored[0], restored[1], step
    return state, data_state, 0

  def _restore(self, step: int, like):
    args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(_to_savable(like))),
                              data=ocp.args.JsonRestore())
    out = self._mgr.restore(step, args=args)
    state = _from_savable(out["state"], like)
    if not all_finite(state):
      raise ValueError("restored state is not finite")
    return state, _decode_data_state(out["data"])

  def best_step(self) -> int | None:
    """The kept step with the best `cfg.best_metric` (None without one)."""
    if not self.cfg.best_metric:
      return None
    self.wait()
    scored = []
    for step in self.steps:
      metrics = self._mgr.metrics(step) or {}
      if self.cfg.best_metric in metrics:
        scored.append((float(metrics[self.cfg.best_metric]), step))
    if not scored:
      return None
    return (min if self.cfg.best_mode == "min" else max)(scored)[1]

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


class PreemptionGuard:
  """Turns SIGTERM into a flag the host loop polls: it saves and exits cleanly.

  Usable as a context manager; the previous handler is restored on exit.
  Only the main thread can install signal handlers; elsewhere it is inert.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):
    log.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
