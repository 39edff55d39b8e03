"""The router: a task description in, an adapted model and the task's
generation pipeline out, in one call.

A registry lists entries {name, description, pipeline, n, task}. `route(d)`

  1. embeds d and every entry's description with the frozen base
     (mean-pooled hidden states, `describe`), centred on the registry's
     mean embedding (the direction all descriptions share says nothing about
     which one is nearest), and picks the entry of highest cosine similarity
        k* = argmax_k  <e(d) - m, e(d_k) - m> / (|e(d) - m| |e(d_k) - m|);
  2. generates the adapter for d itself (not for the entry's description)
     with the hypernetwork and merges it into the base;
  3. returns a `Routed` that answers prompts with entry k*'s pipeline:
     "greedy" (one greedy completion), "best_of_n" (n samples, the one the
     entry's task verifier scores highest, `inference.best_of_n`) or "vote"
     (n samples, the most frequent extracted answer,
     `inference.majority_vote`, and the first sample giving it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Sequence

import jax
import numpy as np

from rankjax import inference, models, sampling
from rankjax.data import tasks
from rankjax.errors import UserInputError
from rankjax.hypernet._network import Hypernet, describe

PIPELINES = ("greedy", "best_of_n", "vote")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered task: how to answer it once routed to.

  pipeline: "greedy", "best_of_n" (rerank n samples with `task.verify`) or
    "vote" (majority over n samples' `task.extract_answer`).
  task: verifies, extracts answers and encodes prompts.
  """
  name: str
  description: str
  pipeline: Literal["greedy", "best_of_n", "vote"]
  task: tasks.Task
  n: int = 1

  def __post_init__(self):
    if self.pipeline not in PIPELINES:
      raise UserInputError(f"router entry {self.name!r}: pipeline {self.pipeline!r} is not "
                           f"one of {PIPELINES}")
    if self.n < 1:
      raise UserInputError(f"router entry {self.name!r}: n must be >= 1, got {self.n}")


@dataclasses.dataclass
class Routed:
  """A description's adapted model and the pipeline of the entry it was
  routed to. `answer(problems)` gives one completion per problem."""
  entry: Entry
  similarity: float
  model: models.Transformer
  tokenizer: Any
  max_new_tokens: int = 32
  temperature: float = 1.0

  def _sample(self, problems: Sequence[dict], n: int, temperature: float, rng):
    prompts = [self.entry.task.prompt_ids(p, self.tokenizer) for p in problems]
    cfg = sampling.SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=temperature,
                                  num_samples=n, eos_token_ids=tuple(self.tokenizer.eos_ids),
                                  pad_token_id=self.tokenizer.pad_id)
    texts = inference.decode_completions(sampling.generate(self.model, prompts, cfg, rng=rng),
                                         self.tokenizer)
    return inference.group_list(texts, n)

  def answer(self, problems: Sequence[dict], rng=None) -> list[str]:
    """One completion per problem ({"prompt": ...}; best-of-N verifies
    against the record's reference columns, or those the task computes from
    the prompt, `Task.reference`)."""
    rng = jax.random.key(0) if rng is None else rng
    e = self.entry
    if e.pipeline == "greedy":
      return [g[0] for g in self._sample(problems, 1, 0.0, rng)]
    groups = self._sample(problems, e.n, self.temperature, rng)
    if e.pipeline == "best_of_n":
      refs = [p if "answer" in p else {**p, **(e.task.reference(p["prompt"]) or {})}
              for p in problems]
      scores = [[float(e.task.verify(t, r) or 0.0) for t in g] for g, r in zip(groups, refs)]
      return inference.best_of_n(groups, scores)
    answers = [[e.task.extract_answer(t) for t in g] for g in groups]
    winners = inference.majority_vote(answers)
    return [next((t for t, a in zip(g, ans) if a == w), g[0])
            for g, ans, w in zip(groups, answers, winners)]


class Router:
  """Routes descriptions to registered entries and generated adapters."""

  def __init__(self, hypernet: Hypernet, entries: Sequence[Entry], *,
               max_new_tokens: int = 32, temperature: float = 1.0):
    if not entries:
      raise UserInputError("the router needs at least one registered entry")
    self.hypernet, self.entries = hypernet, list(entries)
    self.max_new_tokens, self.temperature = max_new_tokens, temperature
    keys = describe(hypernet.base, hypernet.tokenizer, [e.description for e in self.entries])
    self._mean = keys.mean(0)
    self._keys = _unit(keys - self._mean)

  def similarities(self, description: str) -> np.ndarray:
    """f32[entries]: cosine similarity of the description to each entry."""
    query = describe(self.hypernet.base, self.hypernet.tokenizer, [description])[0]
    return self._keys @ _unit(query - self._mean)

  def route(self, description: str) -> Routed:
    """The nearest entry's pipeline over the description's own adapter."""
    sims = self.similarities(description)
    k = int(np.argmax(sims))
    return Routed(entry=self.entries[k], similarity=float(sims[k]),
                  model=self.hypernet.model(description), tokenizer=self.hypernet.tokenizer,
                  max_new_tokens=self.max_new_tokens, temperature=self.temperature)


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
