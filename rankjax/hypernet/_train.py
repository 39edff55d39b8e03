"""Training the hypernetwork: SFT through the adapters it generates.

Each step draws T tasks and b rows of each (rows of one task share its
adapter). The batch is task-major: rows [t·b, (t + 1)·b) belong to task t,

  tokens, loss_mask, segment_ids, positions   int32[T·b, S]   (sharded over data x fsdp)
  embedding                                   f32[T, E]       (replicated)

and the loss is the mean over tasks of `train.sft_loss_fn` (token-mean
cross entropy on completion tokens) of the base under task t's generated
adapter, the T tasks vmapped in one jitted step:

  L(φ) = (1 / T) Σ_t SFT(base ⊕ H_φ(e_t); rows of task t)

Only the hypernetwork's parameters φ train (`TRAINABLE`); the base, its
LoRA placeholders and the input statistics sit in `TrainState.frozen`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax import data, models, train
from rankjax.errors import UserInputError
from rankjax.hypernet._network import HyperNetwork, with_adapters

_SEQUENCE_KEYS = ("tokens", "loss_mask", "segment_ids", "positions")
# Per-task metrics that count (summed over tasks); the rest are averaged.
_SUMMED = ("num_target_tokens", "zero_target_rows")


class Conditioned(nnx.Module):
  """The frozen base's LoRA view and the hypernetwork that fills in its
  adapters: what a `TrainState` of the hypernet stage holds."""

  def __init__(self, view: models.Transformer, net: HyperNetwork):
    self.base = view
    self.net = net


# What the optimizer updates: the hypernetwork's parameters, nothing of the base.
TRAINABLE = nnx.All(nnx.Param, nnx.PathContains("net"))


def _init(model_state, graphdef, tx, seed):
  model = nnx.merge(graphdef, model_state)
  graphdef, params, frozen = nnx.split(model, TRAINABLE, ...)
  # Copies: the step donates its state, and the base's arrays are the caller's.
  params, frozen = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, frozen)
  return train.TrainState(graphdef=graphdef, tx=tx, params=params, frozen=frozen,
                          opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                          rng=jax.random.PRNGKey(seed))


def create_state(view: models.Transformer, net: HyperNetwork,
                 tx: optax.GradientTransformation, mesh: Mesh, *, seed: int = 0):
  """(state, shardings): a `train.TrainState` whose params are the
  hypernetwork's, built from abstract shapes and laid out on `mesh` by its
  variables' logical axes (`train.tree_shardings`)."""
  graphdef, model_state = nnx.split(Conditioned(view, net))
  init = lambda s: _init(s, graphdef, tx, seed)
  shardings = train.tree_shardings(jax.eval_shape(init, model_state), mesh)
  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)(model_state)
  return state, shardings


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
  """Rows over data x fsdp (`train.batch_sharding`); the T task embeddings
  replicated (T need not divide the devices)."""
  rows = train.batch_sharding(mesh)
  return {**{k: rows for k in _SEQUENCE_KEYS}, "embedding": NamedSharding(mesh, P())}


def hypernet_loss_fn(model: Conditioned, batch):
  """(mean over tasks of the SFT loss under each task's generated adapter,
  metrics); see the module docstring for the batch layout."""
  adapters = model.net(batch["embedding"])                       # {name: [T, ...]}
  t = batch["embedding"].shape[0]
  if batch["tokens"].shape[0] % t:
    raise ValueError(f"{batch['tokens'].shape[0]} rows do not split into {t} tasks")
  rows = {k: v.reshape(t, v.shape[0] // t, *v.shape[1:]) for k, v in batch.items()
          if k in _SEQUENCE_KEYS}
  graphdef, lora, rest = nnx.split(model.base, nnx.LoRAParam, ...)

  def one(adapters_t, rows_t):
    return train.sft_loss_fn(nnx.merge(graphdef, with_adapters(lora, adapters_t), rest), rows_t)

  loss_t, metrics_t = jax.vmap(one)(adapters, rows)
  metrics = {k: jnp.sum(v) if k in _SUMMED else jnp.mean(v) for k, v in metrics_t.items()}
  metrics["zero_target_batch"] = jnp.max(metrics_t["zero_target_batch"])
  return jnp.mean(loss_t), metrics


def hypernet_step(state: train.TrainState, batch):
  """One AdamW update of the hypernetwork (`train.update`: gradient,
  non-finite guard, optimizer)."""
  return train.update(state, batch, hypernet_loss_fn)


def jit_hypernet_step(state_shardings, mesh: Mesh):
  return train.jit_step(hypernet_step, state_shardings, batch_shardings(mesh))


def tokenize_rows(rows: Sequence[dict], tokenizer, max_length: int) -> list[dict]:
  """Prompt/completion rows -> {tokens, loss_mask} (BOS + prompt +
  completion + EOS, loss on the completion), as `rankjax.data` tokenizes
  them for SFT. Raises UserInputError naming `data.max_length` for a row
  that does not fit."""
  out = []
  for row in rows:
    record = data.PromptCompletionRecord(prompt=row["prompt"], completion=row["completion"])
    example = data.tokenize_prompt_completion(record, tokenizer)
    if len(example["tokens"]) > max_length:
      raise UserInputError(f"data.max_length={max_length}: the hypernet row {row['prompt']!r} "
                           f"is {len(example['tokens'])} tokens; raise data.max_length")
    out.append(example)
  return out


class TaskBatches:
  """Endless hypernet batches: step n draws (seeded by (seed, n)) T of the
  K training tasks without replacement, one wording of each task's
  description, and b of its rows.

  examples: per task its tokenized rows (`tokenize_rows`);
  inputs: per task f32[W, E], the hypernetwork input of each wording.
  `get_state` / `set_state` (the position) follow `rankjax.data`'s iterators.
  """

  def __init__(self, examples: Sequence[Sequence[dict]], inputs: Sequence[np.ndarray], *,
               tasks_per_step: int, rows_per_task: int, max_length: int, pad_id: int,
               seed: int):
    if tasks_per_step > len(examples):
      raise UserInputError(f"hypernet.tasks_per_step={tasks_per_step} exceeds the "
                           f"{len(examples)} training variants")
    self.examples, self.inputs = examples, inputs
    self.t, self.b, self.length, self.pad_id, self.seed = (
        tasks_per_step, rows_per_task, max_length, pad_id, seed)
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.position])
    self.position += 1
    tasks = rng.choice(len(self.examples), self.t, replace=False)
    rows, embedding = [], []
    for k in tasks:
      embedding.append(self.inputs[k][rng.integers(len(self.inputs[k]))])
      rows += [self.examples[k][i] for i in rng.integers(len(self.examples[k]), size=self.b)]
    return {**data.sequence_batch(rows, "", self.length, self.pad_id),
            "embedding": np.stack(embedding).astype(np.float32)}

  def get_state(self) -> dict:
    return {"position": self.position}

  def set_state(self, state: dict) -> None:
    self.position = int(state["position"])
