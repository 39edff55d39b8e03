"""DPO reference log-probs computed once, before training (`dpo.precompute_ref`).

One pass over the training data scores every (chosen, rejected) pair with
the frozen reference; a host table keyed by the pair's tokens (padding
stripped, so any batch composition or bucket finds it) then fills
`ref_chosen_logps` / `ref_rejected_logps` into each training batch. The
train state needs no reference copy of the weights and the step runs no
reference forward (`_steps.dpo_objective` uses the batch keys when present).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx

from rankjax.train._state import put_batch
from rankjax.train._steps import concat_pair, sequence_logps


def _row_key(tokens_t: np.ndarray, mask_t: np.ndarray) -> bytes:
  end = int(np.flatnonzero(mask_t)[-1]) + 1 if mask_t.any() else len(tokens_t)
  return tokens_t[:end].tobytes()


def pair_keys(batch) -> list[bytes]:
  return [_row_key(batch["chosen_tokens"][i], batch["chosen_loss_mask"][i])
          + b"|" + _row_key(batch["rejected_tokens"][i], batch["rejected_loss_mask"][i])
          for i in range(len(batch["chosen_tokens"]))]


def reference_scorer(model, batch_sharding) -> Callable[[dict], np.ndarray]:
  """Host batch -> float32[2B] reference log-probs (chosen ++ rejected)."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def score(state, batch):
    return sequence_logps(nnx.merge(graphdef, state), concat_pair(batch))[0]

  def fn(batch):
    return np.asarray(jax.device_get(score(state, put_batch(batch, batch_sharding))))
  return fn


def _pad_rows(batch, n: int):
  """The batch padded to n rows by repeating its last row (fixed shapes)."""
  k = len(next(iter(batch.values())))
  if k == n:
    return batch
  return {key: np.concatenate([v, np.repeat(v[-1:], n - k, axis=0)]) for key, v in batch.items()}


def precompute(batches, score: Callable[[dict], np.ndarray], batch_size: int
               ) -> dict[bytes, tuple[float, float]]:
  """{pair key: (ref chosen, ref rejected)} over one pass of `batches`."""
  table = {}
  for batch in batches:
    keys = pair_keys(batch)
    logps = score(_pad_rows(batch, batch_size))
    chosen, rejected = np.split(logps, 2)
    for i, key in enumerate(keys):
      table[key] = (float(chosen[i]), float(rejected[i]))
  return table


@dataclasses.dataclass
class WithReference:
  """Wraps a batch iterator, adding the cached reference log-probs.
  `get_state`/`set_state`/`stats` pass through (checkpoints still resume)."""
  batches: Iterator
  table: dict[bytes, tuple[float, float]]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    batch = dict(next(self.batches))
    try:
      values = np.asarray([self.table[k] for k in pair_keys(batch)], np.float32)
    except KeyError:
      raise KeyError("a training pair has no precomputed reference log-probs (the "
                     "precompute pass and training read different data)") from None
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = values[:, 0], values[:, 1]
    return batch

  def get_state(self):
    return self.batches.get_state()

  def set_state(self, state) -> None:
    self.batches.set_state(state)

  @property
  def stats(self):
    return self.batches.stats
