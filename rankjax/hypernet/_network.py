"""The hypernetwork: a task embedding in, LoRA adapters of the frozen base out.

Task embedding (`describe`): the frozen base's final-normed hidden states of
the description's tokens (BOS excluded), mean-pooled,

  e = (1 / |d|) · Σ_{t in d} h_t(d),    h = base.hidden_states(BOS + d)   [D]

or, as the ablation (`one_hot_inputs`), a one-hot code per training task, so
the first layer's row for task k is a learned task vector; a task it never
saw gets the uniform code, i.e. the mean of the learned vectors.

Network (`HyperNetwork`), with E the embedding width, W `hidden`, r the
rank, and for each target t of every layer the shapes `models.apply_lora`
gives (A_t: [L, in_t..., r], B_t: [L, r, out_t...]):

  x   = (e − μ) / σ              μ, σ: mean and RMS spread of the training inputs
  z   = gelu(gelu(x·W1 + b1)·W2 + b2)                           W1: [E, W], W2: [W, W]
  A_t = z·WA_t + bA_t            WA_t: [W, L, in_t..., r], bA_t: the base's LoRA init
  B_t = z·WB_t + bB_t            WB_t, bB_t: [W, L, r, out_t...], [L, r, out_t...]; zeros

B's head starts at zero, so a fresh hypernetwork yields the base exactly
(as LoRA's B = 0 does; Text-to-LoRA, Charakorn et al. 2025, arXiv
2506.06105; HyperTuning, Phang et al. 2022, arXiv 2211.12485). Each head
weight carries the adapter's logical axes after its own leading (None)
axis, so the generated A/B are laid out like `apply_lora`'s adapters.

The adapted model is the base's LoRA view (`lora_view`) with its
`nnx.LoRAParam` state replaced by generated arrays (`adapted`), computing
x·W + (α / r)·(x·A)·B; `models.merge_lora` folds it into plain weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from rankjax import models
from rankjax.errors import UserInputError

# Adapter arrays by LoRA variable name ("q_lora_a", "q_lora_b", ...).
Adapters = dict[str, jax.Array]


class Stat(nnx.Variable):
  """A fixed statistic of the training inputs (never trained)."""


def lora_view(base: models.Transformer, rank: int, alpha: float, targets: Sequence[str],
              seed: int = 0) -> models.Transformer:
  """The base with LoRA adapters (new module objects over the same base
  arrays; `base` is left untouched): the structure every generated adapter
  fills in, and the init of A's bias."""
  view = nnx.merge(*nnx.split(base))
  return models.apply_lora(view, rank, alpha, targets, rngs=nnx.Rngs(params=seed))


def _lora_vars(view: models.Transformer) -> dict[str, nnx.Variable]:
  return {f"{t}_lora_{ab}": getattr(view.layers, f"{t}_lora_{ab}")
          for t in models.lora_targets(view) for ab in ("a", "b")}


class HyperNetwork(nnx.Module):
  """Task embedding [Z, E] -> adapters {name: [Z, *shape of that adapter]}.

  view: the base's LoRA view (`lora_view`): which targets, their shapes,
    logical axes and A's initialisation.
  inputs: [N, E] the training tasks' inputs, for the centring μ and scale σ.
  hidden: W, the width of the MLP.
  """

  def __init__(self, view: models.Transformer, inputs: np.ndarray, *, hidden: int,
               rngs: nnx.Rngs):
    inputs = np.asarray(inputs, np.float32)
    e = inputs.shape[-1]
    centered = inputs - inputs.mean(0)
    self.mu = Stat(jnp.asarray(inputs.mean(0)))
    self.sigma = Stat(jnp.asarray(max(float(np.sqrt(np.mean(centered ** 2))), 1e-6)))
    self.w1 = nnx.Param(jax.random.normal(rngs.params(), (e, hidden)) / math.sqrt(e),
                        logical_axes=(None, None))
    self.b1 = nnx.Param(jnp.zeros((hidden,)), logical_axes=(None,))
    self.w2 = nnx.Param(jax.random.normal(rngs.params(), (hidden, hidden)) / math.sqrt(hidden),
                        logical_axes=(None, None))
    self.b2 = nnx.Param(jnp.zeros((hidden,)), logical_axes=(None,))
    self.names = tuple(_lora_vars(view))
    for name, var in _lora_vars(view).items():
      axes = var.get_metadata()["logical_axes"]
      shape = var.shape
      if name.endswith("_a"):
        # Per-task deviations start at a tenth of the init's spread (A ~ ±1/sqrt(fan_in)).
        fan_in = math.prod(shape[1:-1])
        w = 0.1 * jax.random.normal(rngs.params(), (hidden, *shape)) / math.sqrt(hidden * fan_in)
        b = jnp.asarray(var[...], jnp.float32)
      else:
        w, b = jnp.zeros((hidden, *shape)), jnp.zeros(shape)
      setattr(self, f"{name}_w", nnx.Param(w, logical_axes=(None, *axes)))
      setattr(self, f"{name}_b", nnx.Param(b, logical_axes=axes))

  def features(self, inputs_ze: jax.Array) -> jax.Array:
    """z [Z, W]: the MLP's task features."""
    x = (inputs_ze.astype(jnp.float32) - self.mu[...]) / self.sigma[...]
    h = jax.nn.gelu(x @ self.w1[...] + self.b1[...])
    return jax.nn.gelu(h @ self.w2[...] + self.b2[...])

  def __call__(self, inputs_ze: jax.Array) -> Adapters:
    z_zw = self.features(inputs_ze)
    out = {}
    for name in self.names:
      w, b = getattr(self, f"{name}_w")[...], getattr(self, f"{name}_b")[...]
      flat = z_zw @ w.reshape(w.shape[0], -1)
      out[name] = flat.reshape(z_zw.shape[0], *b.shape) + b
    return out


def with_adapters(lora_state: nnx.State, adapters: Adapters) -> nnx.State:
  """`lora_state` (the LoRA view's `nnx.LoRAParam` state) holding `adapters`
  instead: same variables and metadata (logical axes), new values."""
  def one(path, var):
    value = adapters[path[-1]]
    if value.shape != var.shape:
      raise ValueError(f"adapter {path[-1]}: shape {value.shape}, the view has {var.shape}")
    return var.replace(value.astype(var.dtype))
  return nnx.map_state(one, lora_state)


def adapted(view: models.Transformer, adapters: Adapters) -> models.Transformer:
  """The LoRA view with one task's generated adapters (no leading Z axis)."""
  graphdef, lora, rest = nnx.split(view, nnx.LoRAParam, ...)
  return nnx.merge(graphdef, with_adapters(lora, adapters), rest)


def one_task(adapters: Adapters, i: int) -> Adapters:
  """Task i's adapters out of a batch of Z."""
  return {k: v[i] for k, v in adapters.items()}


@jax.jit
def _mean_hidden(base: models.Transformer, tokens_bt, mask_bt):
  hidden_btd = base.hidden_states(tokens_bt, attention_mask=mask_bt).astype(jnp.float32)
  # BOS (position 0) is the same for every description: pooled over the text only.
  weight_bt = mask_bt.at[:, 0].set(False).astype(jnp.float32)
  return (jnp.einsum("BTD,BT->BD", hidden_btd, weight_bt)
          / jnp.maximum(weight_bt.sum(-1, keepdims=True), 1.0))


def describe(base: models.Transformer, tokenizer, texts: Sequence[str]) -> np.ndarray:
  """f32[Z, D]: each text's mean-pooled final hidden states under the
  frozen `base` (BOS + text, right-padded; BOS and padding not pooled)."""
  ids = [tokenizer.encode(t, add_bos=True) for t in texts]
  length = max(map(len, ids))
  length = 1 << max(0, (length - 1).bit_length())  # a few shapes, a few compiles
  tokens = np.full((len(ids), length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(ids), length), bool)
  for i, row in enumerate(ids):
    tokens[i, :len(row)], mask[i, :len(row)] = row, True
  return np.asarray(_mean_hidden(base, jnp.asarray(tokens), jnp.asarray(mask)))


def one_hot_inputs(num_tasks: int, task: int | None) -> np.ndarray:
  """The learned-embedding ablation's input: task k's one-hot code, or for
  a task outside the training set (None) the uniform code 1/K: through the
  first (linear) layer, the mean of the learned task vectors."""
  if task is None:
    return np.full((num_tasks,), 1.0 / num_tasks, np.float32)
  return np.eye(num_tasks, dtype=np.float32)[task]


@functools.partial(jax.jit, static_argnums=0)
def _generate(graphdef, state, inputs_ze):
  return nnx.merge(graphdef, state)(inputs_ze)


@dataclasses.dataclass
class Hypernet:
  """A trained hypernetwork with its frozen base: description -> adapter
  -> model.

      hn = hypernet.Hypernet.load(directory, base, tokenizer)
      model = hn.model("Multiply two numbers of one digit. Reply with the number only.")
      out = sampling.generate(model, prompts, cfg)        # a plain Transformer

  base: the frozen base; view: its LoRA view (`lora_view`); net: the
  hypernetwork; embedding: "mean_hidden" (the base's mean-pooled hidden
  states of the description) or "learned" (one-hot codes of the training
  tasks; any other description gets the mean of the learned vectors);
  train_descriptions: per training task, its wordings.
  """
  base: models.Transformer
  view: models.Transformer
  net: HyperNetwork
  tokenizer: Any
  embedding: str
  train_descriptions: tuple[tuple[str, ...], ...]

  def inputs(self, descriptions: Sequence[str]) -> np.ndarray:
    """f32[Z, E]: the hypernetwork's input for each description."""
    if self.embedding == "mean_hidden":
      return describe(self.base, self.tokenizer, descriptions)
    index = {d: k for k, ds in enumerate(self.train_descriptions) for d in ds}
    k = len(self.train_descriptions)
    return np.stack([one_hot_inputs(k, index.get(d)) for d in descriptions])

  def adapters(self, descriptions: Sequence[str]) -> Adapters:
    """Generated adapters {name: [Z, ...]} for Z descriptions."""
    graphdef, state = nnx.split(self.net)
    return _generate(graphdef, state, jnp.asarray(self.inputs(descriptions)))

  def adapted(self, description: str) -> models.Transformer:
    """The base's LoRA view carrying the description's generated adapter."""
    return adapted(self.view, one_task(self.adapters([description]), 0))

  def model(self, description: str) -> models.Transformer:
    """A plain Transformer: the description's adapter merged into the base
    (`models.merge_lora`), ready for `sampling.generate` and HF export."""
    return models.merge_lora(self.adapted(description))

  def save(self, directory: str | Path) -> Path:
    """Writes `hypernet.safetensors` (the network's arrays) and
    `hypernet.json` (what `load` needs to rebuild it) under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(self.net)).items()}
    safetensors.numpy.save_file(arrays, directory / "hypernet.safetensors")
    rank = int(getattr(self.view.layers, f"{self.net.names[0]}")[...].shape[-1])
    meta = {"embedding": self.embedding, "hidden": int(self.net.b1[...].shape[0]),
            "input_width": int(self.net.w1[...].shape[0]), "rank": rank,
            "alpha": float(self.view.layers.lora_scale) * rank,
            "targets": list(models.lora_targets(self.view)),
            "train_descriptions": [list(d) for d in self.train_descriptions]}
    (directory / "hypernet.json").write_text(json.dumps(meta, indent=2))
    return directory

  @classmethod
  def load(cls, directory: str | Path, base: models.Transformer, tokenizer) -> "Hypernet":
    """The hypernetwork `save` wrote, over `base` (the same frozen base)."""
    directory = Path(directory)
    meta_path = directory / "hypernet.json"
    if not meta_path.is_file():
      raise UserInputError(f"{meta_path}: no such file (a directory Hypernet.save wrote)")
    meta = json.loads(meta_path.read_text())
    view = lora_view(base, meta["rank"], meta["alpha"], meta["targets"])
    net = HyperNetwork(view, np.zeros((1, meta["input_width"]), np.float32),
                       hidden=meta["hidden"], rngs=nnx.Rngs(params=0))
    state = nnx.state(net)
    arrays = safetensors.numpy.load_file(directory / "hypernet.safetensors")
    nnx.replace_by_pure_dict(state, {k: jnp.asarray(v) for k, v in arrays.items()})
    nnx.update(net, state)
    return cls(base=base, view=view, net=net, tokenizer=tokenizer, embedding=meta["embedding"],
               train_descriptions=tuple(tuple(d) for d in meta["train_descriptions"]))
