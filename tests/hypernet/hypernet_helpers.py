"""A tiny hypernetwork over a tiny perturbed base, for the tests and the
8-device check script."""

import numpy as np
from flax import nnx

from rankjax import hypernet, testing
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
TARGETS = ("q", "v", "o", "down")
RANK, ALPHA = 4, 8.0
VARIANTS = tuple(hypernet.parse_variant(n) for n in ("add_bare_1", "add_cot_1", "sub_bare_1"))
MAX_LENGTH = 32


def base_model():
  # Perturbed: the initial weights would make every adapter's effect tiny.
  return testing.perturbed(testing.tiny_model("llama", seed=0), seed=1, scale=0.1)


def tiny_hypernet(base=None, embedding: str = "mean_hidden", seed: int = 0) -> hypernet.Hypernet:
  base = base if base is not None else base_model()
  wordings = tuple(tuple(hypernet.descriptions(v)[:2]) for v in VARIANTS)
  if embedding == "mean_hidden":
    inputs = np.concatenate([hypernet.describe(base, TOK, w) for w in wordings])
  else:
    inputs = np.eye(len(VARIANTS), dtype=np.float32)
  view = hypernet.lora_view(base, RANK, ALPHA, TARGETS)
  net = hypernet.HyperNetwork(view, inputs, hidden=16, rngs=nnx.Rngs(params=seed))
  return hypernet.Hypernet(base=base, view=view, net=net, tokenizer=TOK, embedding=embedding,
                           train_descriptions=wordings)


def nonzero_b_heads(hn: hypernet.Hypernet, scale: float = 0.05, seed: int = 0) -> None:
  """Gives the B heads random values (in place), so adapters change the model."""
  rng = np.random.default_rng(seed)
  for name in hn.net.names:
    if name.endswith("_b"):
      for part in ("_w", "_b"):
        var = getattr(hn.net, name + part)
        var[...] = scale * rng.standard_normal(var.shape).astype(np.float32)


def task_batches(hn: hypernet.Hypernet, *, tasks_per_step: int, rows_per_task: int, seed=0):
  examples = [hypernet.tokenize_rows(hypernet.sft_rows(
      hypernet.make_task(v, seed=0, num_train=16, num_eval=2)), TOK, MAX_LENGTH)
      for v in VARIANTS]
  inputs = [hn.inputs(w) for w in hn.train_descriptions]
  return hypernet.TaskBatches(examples, inputs, tasks_per_step=tasks_per_step,
                              rows_per_task=rows_per_task, max_length=MAX_LENGTH,
                              pad_id=TOK.pad_id, seed=seed)
