"""Tests for rankjax.data.tasks: arithmetic generation, the shared correctness
rule (host vs in-graph verifier), and the GSM8K reader/verifier."""

import functools
import json
import re
import string

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
TOKEN_IDS = tasks.verifier_token_ids(TOK)
_PROMPT = re.compile(r"(\d+)([+*-])(\d+)=")
_OPS = {"+": ("add", lambda a, b: a + b), "-": ("sub", lambda a, b: a - b),
        "*": ("mul", lambda a, b: a * b)}


def _parse(prompt):
  a, sym, b = _PROMPT.fullmatch(prompt).groups()
  return _OPS[sym][0], int(a), int(b), _OPS[sym][1](int(a), int(b))


# ---------------------------------------------------------------------------
# Generation.
# ---------------------------------------------------------------------------


def test_same_seed_same_data_and_seed_matters():
  task = tasks.ArithmeticTask(seed=3)
  assert tasks.generate(task, "train", 200) == tasks.generate(
      task, "train", 200)
  other = tasks.ArithmeticTask(seed=4)
  assert tasks.generate(task, "train", 200) != tasks.generate(
      other, "train", 200)


def test_train_and_test_are_disjoint_even_across_seeds_and_operand_order():
  def problems(split, seed):
    out = set()
    for r in tasks.generate(tasks.ArithmeticTask(max_digits=2, seed=seed),
                            split, 3000):
      op, a, b, _ = _parse(r["prompt"])
      out.add((op, min(a, b), max(a, b)) if op != "sub" else (op, a, b))
    return out

  train = problems("train", 0) | problems("train", 1)
  test = problems("test", 0) | problems("test", 1)
  assert len(test) > 100 and len(train) > 1000
  assert not train & test


@pytest.mark.parametrize("cot", [False, True])
def test_every_op_and_digit_pair_appears_and_answers_are_right(cot):
  task = tasks.ArithmeticTask(min_digits=1, max_digits=3, cot=cot, seed=0)
  for split in ("train", "test"):
    records = tasks.generate(task, split, 1500)
    assert len(records) == 1500
    seen = set()
    for r in records:
      assert set(r) == {"prompt", "completion", "answer"}
      op, a, b, value = _parse(r["prompt"])
      seen.add((op, len(str(a)), len(str(b))))
      assert r["answer"] == str(value)
      assert tasks.extract_answer(r["completion"], cot=cot) == r["answer"]
      assert tasks.verify(r["completion"], r["answer"], cot=cot) == 1.0
      if cot:
        assert r["completion"].endswith(f"\nanswer: {value}")
      else:
        assert r["completion"] == str(value)
    assert seen == {(op, da, db) for op in ("add", "sub", "mul")
                    for da in (1, 2, 3) for db in (1, 2, 3)}


def test_negative_subtraction_and_cot_formats():
  r = tasks.make_record("sub", 12, 345, cot=False)
  assert r == {"prompt": "12-345=", "completion": "-333", "answer": "-333"}
  r = tasks.make_record("sub", 12, 345, cot=True)
  assert r["completion"] == "12-345 = -(345-12) = -333\nanswer: -333"
  r = tasks.make_record("mul", 12, 305, cot=True)
  assert r["completion"] == ("12*5 = 60\n12*300 = 3600\n60 + 3600 = 3660\n"
                             "answer: 3660")
  r = tasks.make_record("mul", 7, 0, cot=True)
  assert r["completion"] == "7*0 = 0\nanswer: 0"
  r = tasks.make_record("add", 12, 345, cot=True)
  assert r["completion"] == "12+345 = 357\nanswer: 357"
  # Every generated subtraction is consistent about the sign.
  for r in tasks.generate(tasks.ArithmeticTask(ops=("sub",)), "train", 300):
    _, a, b, value = _parse(r["prompt"])
    assert int(r["answer"]) == a - b


def test_config_validation():
  with pytest.raises(ValueError, match="unknown"):
    tasks.ArithmeticTask(ops=("div",))
  with pytest.raises(ValueError, match="min_digits"):
    tasks.ArithmeticTask(min_digits=3, max_digits=2)
  with pytest.raises(ValueError, match="split"):
    tasks.generate(tasks.ArithmeticTask(), "valid", 3)


# ---------------------------------------------------------------------------
# Host rule.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,cot,expected", [
    ("357", False, "357"),
    ("357\n", False, "357"),
    ("357\nanything else", False, "357"),
    ("-333", False, "-333"),
    ("0", False, "0"),
    ("0357", False, None),
    ("-0", False, None),
    ("+357", False, None),
    (" 357", False, None),
    ("357 ", False, None),
    ("3-57", False, None),
    ("", False, None),
    ("\n357", False, None),
    ("answer: 357", False, None),
    ("12+345 = 357\nanswer: 357", True, "357"),
    ("answer: 357", True, "357"),
    ("answer: -333\n", True, "-333"),
    ("answer: 1\nanswer: 357\nmore text", True, "357"),
    ("answer: 357\nanswer: 1", True, "1"),
    ("answer: 357 answer:", True, None),
    ("answer:357", True, None),
    ("answer:  357", True, None),
    ("answer: 357 ", True, None),
    ("answer: 0357", True, None),
    ("12+345 = 357", True, None),
    ("", True, None),
])
def test_extract_answer(text, cot, expected):
  assert tasks.extract_answer(text, cot=cot) == expected


def test_verify_uses_canonical_reference():
  assert tasks.verify("357", 357) == 1.0
  assert tasks.verify("357", "0357") == 1.0  # reference normalized
  assert tasks.verify("357", "358") == 0.0
  assert tasks.verify("-5", -5) == 1.0
  assert tasks.verify("answer: -5", "-5", cot=True) == 1.0
  with pytest.raises(ValueError, match="not an integer"):
    tasks.verify("1", "one")


# ---------------------------------------------------------------------------
# In-graph verifier == host verifier.
# ---------------------------------------------------------------------------

_INTERESTING = "0123456789-\n :answer" + "+=*x."
_ALL_CHARS = string.digits + string.ascii_letters + " \n:-+=*.,"


def _random_char(rng):
  pool = _INTERESTING if rng.random() < 0.8 else _ALL_CHARS
  return pool[rng.integers(len(pool))]


def _corrupt(text, rng):
  """A random edit of a (usually correct) completion text."""
  kind = rng.integers(12)
  pos = int(rng.integers(len(text) + 1))
  if kind == 0 and text:  # substitute
    pos = min(pos, len(text) - 1)
    return text[:pos] + _random_char(rng) + text[pos + 1:]
  if kind == 1:  # truncate
    return text[:pos]
  if kind == 2:  # insert
    return text[:pos] + _random_char(rng) + text[pos:]
  if kind == 3:  # junk
    return "".join(_random_char(rng) for _ in range(rng.integers(12)))
  if kind == 4:  # leading zeros / signs
    prefix = ["0", "-", "+", "-0", "00", " "][rng.integers(6)]
    at = text.rfind("answer: ")
    at = 0 if at < 0 else at + len("answer: ")
    return text[:at] + prefix + text[at:]
  if kind == 5:  # text after the answer
    return text + ["\n", " ", "1", "\nfoo", "\nanswer: 7", "x", "\n\n3"][
        rng.integers(7)]
  if kind == 6:  # extra marker earlier
    return ["answer: 5\n", "answer: ", "answer:", "answer:\n"][
        rng.integers(4)] + text
  if kind == 7:  # delete a char
    pos = min(pos, max(len(text) - 1, 0))
    return text[:pos] + text[pos + 1:]
  if kind == 8:  # move the sign
    digits = text.replace("-", "")
    return digits[:pos] + "-" + digits[pos:]
  if kind == 9:
    return ""
  return text  # kinds 10, 11: untouched (correct)


def _ids_and_mask(text, rng, length):
  """Token ids with random tails: eos/pad/bos/mask-0/out-of-vocab ids."""
  ids = TOK.encode(text)
  mask = [1] * len(ids)
  tail = rng.integers(6)
  if tail == 0:  # sampler-like: eos then pads
    ids, mask = ids + [TOK.eos_id], mask + [1]
  elif tail == 1 and ids:  # early eos with characters after it
    at = int(rng.integers(len(ids)))
    ids = ids[:at] + [TOK.eos_id] + ids[at:]
    mask = mask + [1]
  elif tail == 2 and ids:  # mask cut in the middle, characters continue
    at = int(rng.integers(len(ids)))
    mask = [1] * at + [0] + [1] * (len(ids) - at - 1)
  elif tail == 3 and ids:  # bos or pad inside
    at = int(rng.integers(len(ids)))
    ids = ids[:at] + [int(rng.choice([TOK.bos_id, TOK.pad_id]))] + ids[at:]
    mask = mask + [1]
  elif tail == 4 and ids:  # an out-of-vocabulary id
    at = int(rng.integers(len(ids)))
    ids = ids[:at] + [TOK.vocab_size + 5] + ids[at + 1:]
  ids, mask = ids[:length], mask[:length]
  pad = length - len(ids)
  # Pads past the end are sometimes masked in, sometimes not.
  pad_mask = int(rng.integers(2))
  return ids + [TOK.pad_id] * pad, mask + [pad_mask] * pad


def _random_cases(cot, n, seed, length=48):
  rng = np.random.default_rng(seed)
  records = tasks.generate(tasks.ArithmeticTask(cot=cot, max_digits=3,
                                                seed=seed), "train", n)
  ids_bt, mask_bt, answers = [], [], []
  for r in records:
    text = r["completion"]
    for _ in range(int(rng.integers(3))):
      text = _corrupt(text, rng)
    answer = r["answer"]
    if rng.random() < 0.15:  # a near-miss reference: prefix / extension / sign
      answer = [str(int(answer) // 10), answer + "1", str(-int(answer))][
          rng.integers(3)]
    ids, mask = _ids_and_mask(text, rng, length)
    ids_bt.append(ids)
    mask_bt.append(mask)
    answers.append(answer)
  return (np.asarray(ids_bt, np.int32), np.asarray(mask_bt, np.int32),
          answers)


@functools.partial(jax.jit, static_argnames=("cot",))
def _jit_verify(ids_bt, mask_bt, answer_ids_ba, answer_mask_ba, cot):
  return tasks.verify_tokens(ids_bt, mask_bt, answer_ids_ba, answer_mask_ba,
                             cot=cot, token_ids=TOKEN_IDS)


@pytest.mark.parametrize("cot", [False, True])
def test_verify_tokens_agrees_with_host_verifier(cot):
  ids_bt, mask_bt, answers = _random_cases(cot, n=4000, seed=int(cot))
  answer_ids_ba, answer_mask_ba = tasks.encode_answers(answers, TOK, 8)
  got = np.asarray(_jit_verify(ids_bt, mask_bt, answer_ids_ba,
                               answer_mask_ba, cot))
  want = np.array([
      tasks.verify(tasks.completion_text(i, m, TOK), a, cot=cot)
      for i, m, a in zip(ids_bt, mask_bt, answers)], np.float32)
  assert got.dtype == np.float32
  bad = np.flatnonzero(got != want)
  assert bad.size == 0, [
      (TOK.decode(ids_bt[k], skip_special_tokens=False), mask_bt[k].tolist(),
       answers[k], got[k], want[k]) for k in bad[:5]]
  # The random cases exercise both outcomes substantially.
  assert want.sum() >= 300 and (1 - want).sum() >= 300


@pytest.mark.parametrize("cot", [False, True])
def test_verify_tokens_equals_verify_of_plain_decode_for_sampler_output(cot):
  """Sampler output (chars, eos, pads): tok.decode is the completion text."""
  rng = np.random.default_rng(7)
  records = tasks.generate(tasks.ArithmeticTask(cot=cot), "test", 500)
  texts = [_corrupt(r["completion"], rng) for r in records]
  length = 48
  ids_bt = np.zeros((len(texts), length), np.int32)
  mask_bt = np.zeros((len(texts), length), bool)
  for k, text in enumerate(texts):
    ids = (TOK.encode(text) + [TOK.eos_id])[:length]
    ids_bt[k, :len(ids)] = ids
    mask_bt[k, :len(ids)] = True
  answers = [r["answer"] for r in records]
  answer_ids_ba, answer_mask_ba = tasks.encode_answers(answers, TOK, 8)
  got = _jit_verify(ids_bt, mask_bt, answer_ids_ba, answer_mask_ba, cot)
  want = [tasks.verify(TOK.decode(i), a, cot=cot)
          for i, a in zip(ids_bt, answers)]
  chex.assert_trees_all_equal(np.asarray(got), np.asarray(want, np.float32))


def test_verify_tokens_hand_cases():
  cases = [  # (text, answer, cot, expected)
      ("357", "357", False, 1.0), ("357\nx", "357", False, 1.0),
      ("35", "357", False, 0.0), ("3570", "357", False, 0.0),
      ("0357", "357", False, 0.0), ("", "0", False, 0.0),
      ("-333", "-333", False, 1.0), ("333", "-333", False, 0.0),
      ("answer: 357", "357", True, 1.0), ("answer:357", "357", True, 0.0),
      ("answer: 357\nanswer: 3", "357", True, 0.0),
      ("answer: 3\nanswer: 357\n", "357", True, 1.0),
      ("answe: 357", "357", True, 0.0),
  ]
  length = 32
  ids_bt = np.zeros((len(cases), length), np.int32)
  for k, (text, *_) in enumerate(cases):
    ids_bt[k, :len(text)] = TOK.encode(text)
  mask_bt = ids_bt != TOK.pad_id
  answer_ids_ba, answer_mask_ba = tasks.encode_answers(
      [c[1] for c in cases], TOK, 6)
  for cot in (False, True):
    rows = [k for k, c in enumerate(cases) if c[2] == cot]
    got = _jit_verify(ids_bt[rows], mask_bt[rows], answer_ids_ba[rows],
                      answer_mask_ba[rows], cot)
    chex.assert_trees_all_equal(
        np.asarray(got), np.array([cases[k][3] for k in rows], np.float32))


def test_verify_tokens_is_vmappable_and_handles_tiny_lengths():
  ids_bt, mask_bt, answers = _random_cases(True, n=64, seed=5, length=20)
  answer_ids_ba, answer_mask_ba = tasks.encode_answers(answers, TOK, 8)
  flat = _jit_verify(ids_bt, mask_bt, answer_ids_ba, answer_mask_ba, True)
  stacked = jax.jit(jax.vmap(functools.partial(
      tasks.verify_tokens, cot=True, token_ids=TOKEN_IDS)))(
          *(x.reshape(4, 16, -1) for x in (ids_bt, mask_bt, answer_ids_ba,
                                           answer_mask_ba)))
  chex.assert_trees_all_equal(np.asarray(stacked).reshape(-1),
                              np.asarray(flat))
  # Completion shorter than the marker, and zero-length completions.
  for length in (3, 0):
    out = tasks.verify_tokens(
        jnp.full((2, length), TOK.char_id("1"), jnp.int32),
        jnp.ones((2, length), bool), answer_ids_ba[:2], answer_mask_ba[:2],
        cot=True, token_ids=TOKEN_IDS)
    chex.assert_trees_all_equal(np.asarray(out), np.zeros(2, np.float32))


def test_encode_answers():
  ids, mask = tasks.encode_answers([357, "-5", "007"], TOK, 4)
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert TOK.decode(ids[0]) == "357" and mask[0].tolist() == [1, 1, 1, 0]
  assert TOK.decode(ids[1]) == "-5" and mask[1].tolist() == [1, 1, 0, 0]
  assert TOK.decode(ids[2]) == "7"
  with pytest.raises(ValueError, match="longer than max_len"):
    tasks.encode_answers(["12345"], TOK, 4)


# ---------------------------------------------------------------------------
# GSM8K.
# ---------------------------------------------------------------------------


def _write_jsonl(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return path


def test_read_gsm8k_good_rows(tmp_path):
  rows = [
      {"question": "Tom has 3 apples and buys 4. How many?",
       "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
      {"question": "Big?", "answer": "It costs $1,200.\n#### 1,200"},
  ]
  path = _write_jsonl(tmp_path / "gsm.jsonl",
                      [json.dumps(rows[0]), "", json.dumps(rows[1])])
  records = tasks.read_gsm8k(path)
  assert records == [
      {"prompt": rows[0]["question"], "completion": rows[0]["answer"],
       "answer": "7"},
      {"prompt": "Big?", "completion": rows[1]["answer"], "answer": "1200"},
  ]
  for r in records:
    assert tasks.verify_numeric(r["completion"], r["answer"]) == 1.0


@pytest.mark.parametrize("bad_line,message", [
    ("{not json", "invalid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"answer": "#### 3"}', "missing field 'question'"),
    ('{"question": "q"}', "missing field 'answer'"),
    ('{"question": "q", "answer": 3}', "must be a string"),
    ('{"question": "q", "answer": "it is 3"}', "no '####'"),
    ('{"question": "q", "answer": "#### three"}', "not a number"),
])
def test_read_gsm8k_bad_rows_name_file_and_line(tmp_path, bad_line, message):
  good = json.dumps({"question": "q", "answer": "#### 1"})
  path = _write_jsonl(tmp_path / "bad.jsonl", [good, "", bad_line, good])
  with pytest.raises(tasks.GSM8KFormatError) as info:
    tasks.read_gsm8k(path)
  assert str(info.value).startswith(f"{path}:3:")
  assert message in str(info.value)


@pytest.mark.parametrize("text,expected", [
    ("so 48/2 = 24 and 24 + 48 = 72\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("#### $1,000.50 total", "1000.50"),
    ("first 5 #### 7 then 9", "7"),
    ("#### 3 #### 4", "4"),
    ("#### nothing", None),
    ("The answer is 72.", "72"),
    ("costs $18, so -3 left", "-3"),
    ("10-5", "5"),
    ("no numbers", None),
    ("", None),
])
def test_extract_gsm8k_answer(text, expected):
  assert tasks.extract_gsm8k_answer(text) == expected


@pytest.mark.parametrize("completion,answer,expected", [
    ("The answer is 72", "72", 1.0),
    ("#### 72.0", "72", 1.0),
    ("#### 72.00", 72, 1.0),
    ("It is $1,200.", "1200", 1.0),
    ("#### 1200", "1,200", 1.0),
    ("#### 1200", "$1,200", 1.0),
    ("#### 0.5", "0.50", 1.0),
    ("#### 72", "72.5", 0.0),
    ("#### -3", "3", 0.0),
    ("#### 71", "72", 0.0),
    ("no number", "72", 0.0),
    ("#### 72", "not a number", 0.0),
    ("#### 72", "nan", 0.0),
])
def test_verify_numeric(completion, answer, expected):
  assert tasks.verify_numeric(completion, answer) == expected
