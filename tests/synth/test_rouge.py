"""ROUGE-L: golden values and the pooled (vectorized) index against the
pairwise definition."""

import numpy as np
import pytest

from rankjax.synth import NoveltyIndex, lcs_length, rouge_l, rouge_tokens


def test_tokens():
  assert rouge_tokens("The quick, brown fox!") == ["the", "quick", "brown", "fox"]
  assert rouge_tokens("12+34=") == ["12", "34"]
  assert rouge_tokens("12+ 34=", "chars") == ["1", "2", "+", "3", "4", "="]
  with pytest.raises(ValueError, match="words"):
    rouge_tokens("x", "bytes")


def test_lcs():
  assert lcs_length("ABCBDAB", "BDCABA") == 4
  assert lcs_length("", "abc") == 0
  assert lcs_length("abc", "abc") == 3


def test_golden_values():
  # The rouge-score README's example: P = 5/8, R = 5/9, F1 = 10/17.
  f = rouge_l("The quick brown dog jumps on the log.",
              "The quick brown fox jumps over the lazy dog")
  assert f == pytest.approx(10 / 17)
  # LCS 5 of 6 and 5 tokens: P = 5/6, R = 1, F1 = 10/11.
  assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
  assert rouge_l("12+34=", "12-34=", "chars") == pytest.approx(5 / 6)
  assert rouge_l("12+34=", "12-34=") == 1.0           # words drop the operator
  assert rouge_l("", "anything") == 0.0
  assert rouge_l("abc", "xyz") == 0.0


def test_index_matches_pairwise():
  rng = np.random.default_rng(0)
  words = ["a", "b", "c", "d", "e"]
  texts = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(60)]
  index = NoveltyIndex(texts[:40])
  assert len(index) == 40
  for cand in texts[40:] + ["", "zzz", texts[3]]:
    expect = np.array([rouge_l(cand, t) for t in texts[:40]])
    np.testing.assert_allclose(index.scores(cand), expect, atol=1e-12)
    assert index.max_rouge_l(cand) == pytest.approx(expect.max())
  assert index.max_rouge_l(texts[3]) == 1.0
  assert NoveltyIndex().max_rouge_l("a b") == 0.0
