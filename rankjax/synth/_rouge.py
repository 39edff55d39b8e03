"""ROUGE-L (Lin 2004): the longest common subsequence of two token lists.

  P = LCS(c, r) / |c|,  R = LCS(c, r) / |r|,  F1 = 2·P·R / (P + R)   (0 if LCS = 0)

Self-Instruct (Wang et al. 2023) keeps a proposed instruction only when its
ROUGE-L F1 to every instruction already in the pool is below 0.7. Tokens
("words"): lower-cased runs of [a-z0-9], everything else a separator, as
the `rouge-score` package tokenizes without stemming. "chars": every
non-space character, for short symbolic prompts such as "123+45=" whose
operators the word tokens would drop.

`NoveltyIndex` holds a growing pool as one padded id matrix and computes a
candidate's LCS against all of it at once (the dynamic programme runs over
the candidate's tokens and the pool's positions; each cell is one numpy
operation across the pool).
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

import numpy as np

Unit = Literal["words", "chars"]
_WORD = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str, unit: Unit = "words") -> list[str]:
  """The tokens ROUGE-L compares ("words" or "chars", see the module doc)."""
  if unit == "chars":
    return [c for c in text if not c.isspace()]
  if unit == "words":
    return _WORD.findall(text.lower())
  raise ValueError(f"rouge tokens must be 'words' or 'chars', got {unit!r}")


def lcs_length(a: Sequence, b: Sequence) -> int:
  """Length of the longest common subsequence of `a` and `b`."""
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def f1_from_lcs(lcs, len_candidate, len_reference):
  """ROUGE-L F1 from LCS lengths (scalars or arrays); 0 where LCS is 0."""
  lcs = np.asarray(lcs, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    p = lcs / len_candidate
    r = lcs / np.asarray(len_reference, np.float64)
    f = np.where(lcs > 0, 2 * p * r / (p + r), 0.0)
  return f


def rouge_l(candidate: str, reference: str, unit: Unit = "words") -> float:
  """ROUGE-L F1 of two texts."""
  c, r = rouge_tokens(candidate, unit), rouge_tokens(reference, unit)
  if not c or not r:
    return 0.0
  return float(f1_from_lcs(lcs_length(c, r), len(c), len(r)))


class NoveltyIndex:
  """A pool of texts; `max_rouge_l(text)` is the highest ROUGE-L F1 of
  `text` against any of them (0 for an empty pool)."""

  def __init__(self, texts: Sequence[str] = (), unit: Unit = "words"):
    self.unit = unit
    self._vocab: dict[str, int] = {}
    self._ids = np.zeros((0, 8), np.int32)          # [P, Lmax], -1 padded
    self._lengths = np.zeros((0,), np.int32)
    self._size = 0
    for t in texts:
      self.add(t)

  def __len__(self) -> int:
    return self._size

  def _encode(self, text: str, grow: bool) -> list[int]:
    out = []
    for tok in rouge_tokens(text, self.unit):
      if tok not in self._vocab and grow:
        self._vocab[tok] = len(self._vocab)
      out.append(self._vocab.get(tok, -2))  # -2: a token no pool text has
    return out

  def add(self, text: str) -> None:
    ids = self._encode(text, grow=True)
    rows, width = self._ids.shape
    if len(ids) > width or self._size == rows:
      grown = np.full((max(2 * rows, 16), max(width, len(ids))), -1, np.int32)
      grown[:self._size, :width] = self._ids[:self._size]
      self._ids = grown
      self._lengths = np.concatenate(
          [self._lengths[:self._size], np.zeros(grown.shape[0] - self._size, np.int32)])
    self._ids[self._size] = -1
    self._ids[self._size, :len(ids)] = ids
    self._lengths[self._size] = len(ids)
    self._size += 1

  def scores(self, text: str) -> np.ndarray:
    """ROUGE-L F1 of `text` against every pool text, float64[P]."""
    cand = self._encode(text, grow=False)
    pool_ps = self._ids[:self._size]
    if not cand or not self._size:
      return np.zeros((self._size,))
    width = int(self._lengths[:self._size].max(initial=0))
    pool_ps = pool_ps[:, :width]
    prev = np.zeros((self._size, width + 1), np.int32)
    for tok in cand:
      match_ps = pool_ps == tok
      cur = np.zeros_like(prev)
      for j in range(width):
        cur[:, j + 1] = np.where(match_ps[:, j], prev[:, j] + 1,
                                 np.maximum(prev[:, j + 1], cur[:, j]))
      prev = cur
    lcs = prev[np.arange(self._size), self._lengths[:self._size]]
    return f1_from_lcs(lcs, len(cand), np.maximum(self._lengths[:self._size], 1))

  def max_rouge_l(self, text: str) -> float:
    s = self.scores(text)
    return float(s.max()) if s.size else 0.0
