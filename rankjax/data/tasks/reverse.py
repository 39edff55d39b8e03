"""Built-in word reversal: `reverse abc:` -> `cba`, generated in-process.

A small verifiable task for the character tokenizer (`data.source=reverse`):
lowercase words of 3 to 6 letters, seeded, train and eval splits disjoint
(a word's split depends on its hash, not on the seed). Correct = the first
line of the completion equals the reversed word.
"""

from __future__ import annotations

import functools
import hashlib
import string

import numpy as np

from rankjax.data.tasks._task import Task, check_split


def word_split(word: str, eval_fraction: float = 0.2) -> str:
  """"train" or "eval", from the word's hash: fixed across seeds."""
  h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big") / 2**64
  return "eval" if h < eval_fraction else "train"


def generate(split: str, n: int, seed: int = 0) -> list[dict]:
  """`n` records of `split`, deterministic in `seed`."""
  rng = np.random.default_rng([seed, ("train", "eval").index(split)])
  records = []
  while len(records) < n:
    word = "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(3, 7))))
    if word_split(word) == split:
      records.append({"prompt": f"reverse {word}:", "completion": word[::-1],
                      "answer": word[::-1]})
  return records


class Reverse(Task):
  name = "reverse"

  def __init__(self, *, num_train: int = 20000, num_eval: int = 200, seed: int = 0):
    self.sizes, self.seed = {"train": num_train, "eval": num_eval}, seed

  @functools.cache
  def records(self, split: str) -> list[dict]:
    check_split(split)
    return generate(split, self.sizes[split], self.seed)

  @property
  def has_verifier(self) -> bool:
    return True

  def verify(self, text: str, record: dict) -> float:
    return float(self.extract_answer(text) == record["answer"])


def make(cfg) -> Reverse:
  """`data.source="reverse"` (`data.num_train`, `data.num_eval`, `seed`)."""
  return Reverse(num_train=cfg.data.num_train, num_eval=cfg.data.num_eval, seed=cfg.seed)
