"""Ranked lists ({prompt, completions, scores}): parsing, tokenization,
[B, K, T] batches, bad rows, and the built-in tasks' ranked lists."""

import decimal
import json

import numpy as np
import pytest

from rankjax import data
from rankjax.data import DataError
from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
PAD = TOK.pad_id


def chat(*turns):
  return [{"role": r, "content": c} for r, c in turns]


def ranked(prompt="1+1=", completions=("2", "3", "11"), scores=(1.0, 0.5, 0.0)):
  return {"prompt": prompt, "completions": list(completions), "scores": list(scores)}


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def pipeline(rows_or_source, **kw):
  source = (data.RecordSource(rows_or_source)
            if isinstance(rows_or_source, list) else rows_or_source)
  kw = {"global_batch_size": 2, "max_length": 16, "shuffle": False, **kw}
  return data.build_pipeline(source, TOK, **kw)


def candidate(prompt, completion, **kw):
  return data.tokenize_prompt_completion(
      data.PromptCompletionRecord(prompt, completion), TOK, **kw)


# -- detection and parsing -----------------------------------------------------


@pytest.mark.parametrize("row", [
    ranked(),
    dict(ranked(), id=7, chosen="2", rejected="3"),  # ranked keys win over preference
    ranked(prompt=chat(("user", "1+1")),
           completions=(chat(("assistant", "2")), chat(("assistant", "3")))),
])
def test_detected_by_keys(row):
  assert data.detect_format(row) == data.RANKED


def test_without_scores_the_missing_field_is_named():
  row = {"prompt": "q", "completions": ["a", "b"]}
  assert data.detect_format(row) == data.RANKED
  with pytest.raises(data.DataError, match="field 'scores': missing") as e:
    data.parse_record(row, location="lists.jsonl:3")
  assert e.value.location == "lists.jsonl:3" and e.value.reason == "missing_field"


def test_parse_strings():
  rec = data.parse_record(ranked(scores=(1, 0.5, -2)))
  assert rec == data.RankedRecord("1+1=", ("2", "3", "11"), (1.0, 0.5, -2.0))
  assert all(type(s) is float for s in rec.scores)
  # Ties and numpy values are fine.
  rec = data.parse_record(ranked(completions=("a", "b"), scores=np.asarray([1.0, 1.0])))
  assert rec.scores == (1.0, 1.0)


def test_parse_messages():
  prompt = chat(("system", "be brief"), ("user", "1+1"))
  comps = (chat(("assistant", "2")), chat(("assistant", "3")))
  rec = data.parse_record(ranked(prompt=prompt, completions=comps, scores=(1, 0)))
  assert isinstance(rec, data.RankedRecord)
  assert rec.prompt == prompt and rec.completions == comps and rec.scores == (1.0, 0.0)


def _error(row, location="d.jsonl:5"):
  with pytest.raises(DataError) as e:
    data.parse_record(row, location=location)
  return e.value


@pytest.mark.parametrize("row,field,reason", [
    (ranked(completions=("2",), scores=(1,)), "completions", "empty"),
    (ranked(completions=(), scores=()), "completions", "empty"),
    (ranked(scores=(1, 0)), "scores", "wrong_type"),               # 3 completions, 2 scores
    (dict(ranked(), completions="2"), "completions", "wrong_type"),
    (dict(ranked(), scores=1.0), "scores", "wrong_type"),
    (dict(ranked(), scores={"a": 1}), "scores", "wrong_type"),
    (ranked(scores=(1, "0.5", 0)), "scores[1]", "wrong_type"),
    (ranked(scores=(1, None, 0)), "scores[1]", "wrong_type"),
    (ranked(scores=(1, True, 0)), "scores[1]", "wrong_type"),
    (ranked(scores=(1, 0, float("nan"))), "scores[2]", "wrong_type"),
    (ranked(scores=(1, float("-inf"), 0)), "scores[1]", "wrong_type"),
    (ranked(scores=(1, 10**400, 0)), "scores[1]", "wrong_type"),   # overflows a float
    (ranked(completions=("2", " ", "4")), "completions[1]", "empty"),
    (ranked(completions=("2", 3, "4")), "completions[1]", "wrong_type"),
    (ranked(completions=("2", "3", chat(("assistant", "4")))), "completions[2]",
     "wrong_type"),                                                 # string prompt
    (ranked(prompt=chat(("user", "q")), completions=(chat(("assistant", "a")), "b"),
            scores=(1, 0)), "completions[1]", "wrong_type"),
    (ranked(prompt=chat(("user", "q")), completions=(chat(("assistant", "a")), []),
            scores=(1, 0)), "completions[1]", "empty"),
    (ranked(prompt=chat(("user", "q")),
            completions=(chat(("assistant", "a")), [{"role": "assistant"}]),
            scores=(1, 0)), "completions[1]", "wrong_type"),
    (dict(ranked(), prompt=3), "prompt", "wrong_type"),
])
def test_parse_errors_name_field_and_location(row, field, reason):
  e = _error(row)
  assert (e.field, e.reason, e.location) == (field, reason, "d.jsonl:5"), str(e)
  assert str(e).startswith(f"d.jsonl:5: field {field!r}: ")


def test_parse_error_messages_say_what_is_wrong():
  assert "2 scores for 3 completions" in str(_error(ranked(scores=(1, 0))))
  assert "at least 2 completions, got 1" in str(
      _error(ranked(completions=("2",), scores=(1,))))
  assert "must be finite" in str(_error(ranked(scores=(1, 0, float("nan")))))
  assert "expected a number, got str" in str(_error(ranked(scores=(1, "x", 0))))


def test_explicit_format_requires_the_keys():
  with pytest.raises(DataError) as e:
    data.parse_record({"prompt": "q", "completions": ["a", "b"]}, data.RANKED, location="f:1")
  assert (e.value.field, e.value.reason, e.value.location) == ("scores", "missing_field", "f:1")


# -- tokenization ----------------------------------------------------------------


@pytest.mark.parametrize("completion_only_loss", [True, False])
def test_each_candidate_is_its_prompt_completion(completion_only_loss):
  rec = data.parse_record(ranked())
  ex = data.tokenize_ranked(rec, TOK, completion_only_loss=completion_only_loss)
  assert ex["scores"].dtype == np.float32
  np.testing.assert_array_equal(ex["scores"], [1.0, 0.5, 0.0])
  assert len(ex["candidates"]) == 3
  for c, text in zip(ex["candidates"], rec.completions):
    want = candidate(rec.prompt, text, completion_only_loss=completion_only_loss)
    assert c.keys() == want.keys() == {"tokens", "loss_mask"}
    for k in c:
      np.testing.assert_array_equal(c[k], want[k])
      assert c[k].dtype == np.int32
    # BOS + prompt + completion + EOS; loss on the completion and EOS only.
    np.testing.assert_array_equal(
        c["tokens"], [TOK.bos_id, *TOK.encode(rec.prompt), *TOK.encode(text), TOK.eos_id])
    if completion_only_loss:
      n = 1 + len(rec.prompt)
      np.testing.assert_array_equal(c["loss_mask"], [0] * n + [1] * (len(text) + 1))
    assert c["loss_mask"][0] == 0


def test_messages_candidates_match_and_end_in_eos():
  prompt = chat(("user", "1+1"))
  comps = (chat(("assistant", "2")), chat(("assistant", "11")))
  rec = data.parse_record(ranked(prompt=prompt, completions=comps, scores=(1, 0)))
  ex = data.tokenize(rec, TOK)
  for c, comp in zip(ex["candidates"], comps):
    want = candidate(prompt, comp)
    np.testing.assert_array_equal(c["tokens"], want["tokens"])
    np.testing.assert_array_equal(c["loss_mask"], want["loss_mask"])
    assert c["tokens"][-1] == TOK.eos_id and c["loss_mask"][-1] == 1
  # The candidates share the rendered prompt and differ after it.
  a, b = (list(c["tokens"]) for c in ex["candidates"])
  start = int(np.argmax(ex["candidates"][0]["loss_mask"]))
  assert a[:start] == b[:start] and a[start:] != b[start:]


def test_untokenizable_completion_names_its_index():
  rec = data.parse_record(ranked(completions=("2", "3\u20ac"), scores=(1, 0)))
  with pytest.raises(DataError) as e:
    data.tokenize_ranked(rec, TOK)
  assert e.value.field == "completions[1]" and e.value.reason == "untokenizable"


# -- batches ----------------------------------------------------------------------

ROWS = [ranked("1+1=", ("2", "3"), (1, 0)),
        ranked("2+2=", ("4", "5", "44"), (1, 0.5, 0.25)),
        ranked("3+3=", ("6", "7", "8"), (1, 0.9, 0.8)),
        ranked("4+4=", ("8", "9"), (0, 1))]


def _check_real(batch, b, k, row):
  """Candidate k of list b == the tokenized completion, right-padded."""
  want = candidate(row["prompt"], row["completions"][k])
  n, t = len(want["tokens"]), batch["tokens"].shape[-1]
  np.testing.assert_array_equal(batch["tokens"][b, k, :n], want["tokens"])
  np.testing.assert_array_equal(batch["tokens"][b, k, n:], [PAD] * (t - n))
  np.testing.assert_array_equal(batch["loss_mask"][b, k, :n], want["loss_mask"])
  np.testing.assert_array_equal(batch["segment_ids"][b, k], [1] * n + [0] * (t - n))
  np.testing.assert_array_equal(batch["positions"][b, k], list(range(n)) + [0] * (t - n))


def _check_padded_slot(batch, b, k):
  assert batch["list_mask"][b, k] == 0 and batch["scores"][b, k] == 0
  assert np.all(batch["tokens"][b, k] == PAD)
  for key in ("loss_mask", "segment_ids", "positions"):
    assert not batch[key][b, k].any(), key


@pytest.mark.parametrize("list_size", [4, 0])
def test_batches_pad_lists_and_mask_them(list_size):
  it = iter(pipeline(ROWS, list_size=list_size, buckets=(8, 12)))
  batches = [next(it), next(it)]
  # list_size=0: K is the longest list of each batch (both hold a 3-list).
  k = list_size or 3
  for i, batch in enumerate(batches):
    assert set(batch) == {"tokens", "loss_mask", "segment_ids", "positions", "scores",
                          "list_mask"}
    for key in ("tokens", "loss_mask", "segment_ids", "positions"):
      assert batch[key].shape == (2, k, 8) and batch[key].dtype == np.int32, key
    assert batch["scores"].shape == batch["list_mask"].shape == (2, k)
    assert batch["scores"].dtype == np.float32 and batch["list_mask"].dtype == np.int32
    for b in range(2):
      row = ROWS[2 * i + b]
      n = len(row["completions"])
      np.testing.assert_array_equal(batch["list_mask"][b], [1] * n + [0] * (k - n))
      np.testing.assert_allclose(batch["scores"][b, :n], row["scores"])
      for j in range(n):
        _check_real(batch, b, j, row)
      for j in range(n, k):
        _check_padded_slot(batch, b, j)


def test_list_size_zero_follows_each_batch():
  rows = [ranked("1+1=", ("2", "3"), (1, 0))] * 2 + [ranked("2+2=", ("4", "5", "6", "7"),
                                                           (3, 2, 1, 0))] * 2
  it = iter(pipeline(rows, list_size=0))
  assert next(it)["tokens"].shape[:2] == (2, 2)
  assert next(it)["tokens"].shape[:2] == (2, 4)


def test_bucket_is_the_longest_candidate():
  rows = [ranked("1+1=", ("2", "3" * 7), (1, 0))] * 2  # 13 tokens for the long one
  batch = next(iter(pipeline(rows, list_size=2, buckets=(8, 12))))
  assert batch["tokens"].shape == (2, 2, 16)  # 13 > 12: max_length is the last bucket
  _check_real(batch, 0, 1, rows[0])


def test_too_long_list_is_a_bad_row(tmp_path):
  rows = ROWS + [ranked("5+5=", tuple("abcde"), (5, 4, 3, 2, 1))] + ROWS
  path = write_jsonl(tmp_path / "r.jsonl", rows)
  with pytest.raises(DataError) as e:
    list(pipeline(data.JsonlSource(path), list_size=4, global_batch_size=1))
  assert (e.value.field, e.value.reason) == ("completions", "too_long")
  assert str(e.value).startswith(f"{path}:5: field 'completions': 5 completions exceed")
  it = iter(pipeline(data.JsonlSource(path), list_size=4, on_bad_row="skip",
                     global_batch_size=1))
  batches = list(it)
  assert len(batches) == 8
  assert it.stats.skipped == {"too_long": 1}
  assert it.stats.rows == 9 and it.stats.examples == 8
  # Without a list size nothing is too long.
  assert len(list(pipeline(data.JsonlSource(path), list_size=0, global_batch_size=1))) == 9


def test_bad_ranked_row_in_a_file_names_line_and_field(tmp_path):
  bad = ranked(scores=(1, "high", 0))
  path = write_jsonl(tmp_path / "r.jsonl", [ROWS[0], ROWS[1], bad, ROWS[2]])
  with pytest.raises(DataError) as e:
    pipeline(data.JsonlSource(path), global_batch_size=4)
  assert str(e.value).startswith(f"{path}:3: field 'scores[1]': ")
  assert e.value.reason == "wrong_type"
  # JSON's NaN literal parses to a float; it is no score either.
  nan = tmp_path / "nan.jsonl"
  nan.write_text(json.dumps(ROWS[0]) + "\n"
                 + '{"prompt": "q", "completions": ["a", "b"], "scores": [1, NaN]}\n')
  with pytest.raises(DataError, match=r"nan.jsonl:2: field 'scores\[1\]': must be finite"):
    pipeline(data.JsonlSource(str(nan)), global_batch_size=2)


def test_truncation_cuts_each_candidate():
  rows = [ranked("12345=", ("abcdefghij", "xy"), (1, 0))] * 2  # 18 and 10 tokens
  it = iter(pipeline(rows, truncation="right", max_length=12, list_size=2))
  b = next(it)
  assert b["tokens"].shape == (2, 2, 12)
  assert TOK.decode(b["tokens"][0, 0]) == "12345=abcde"
  assert TOK.decode(b["tokens"][0, 1]) == "12345=xy"  # short: untouched (EOS kept)
  assert b["tokens"][0, 1, 9] == TOK.eos_id
  assert b["loss_mask"][0, 0, 0] == 0 and b["loss_mask"][0, 0, -1] == 1
  assert it.stats.truncated_right == 2  # counted per list, not per candidate
  it = iter(pipeline(rows, truncation="left", max_length=12, list_size=2))
  b = next(it)
  assert TOK.decode(b["tokens"][0, 0]) == "=abcdefghij"
  assert b["loss_mask"][0, 0, 0] == 0
  assert it.stats.truncated_left == 2
  with pytest.raises(DataError) as e:
    pipeline(rows, max_length=12, list_size=2)  # truncation="error"
  assert (e.value.field, e.value.reason) == ("completions[0]", "too_long")
  assert "18 tokens exceed max_length=12" in str(e.value)


def test_prompt_that_cannot_fit_is_a_bad_row():
  rows = [ranked("1234567890=", ("2", "3"), (1, 0))] * 2
  with pytest.raises(DataError) as e:
    pipeline(rows, truncation="right", max_length=8, list_size=2)
  assert (e.value.field, e.value.reason) == ("prompt", "too_long")


def test_ranked_rows_cannot_be_packed():
  with pytest.raises(DataError, match="packing supports"):
    pipeline(ROWS, packing=True)


def test_detected_from_a_file(tmp_path):
  path = write_jsonl(tmp_path / "r.jsonl", ROWS)
  pipe = pipeline(data.JsonlSource(path), list_size=3)
  assert pipe.format == pipe.example_format == data.RANKED


# -- the built-in tasks' ranked lists ---------------------------------------------


@pytest.mark.parametrize("cot", [False, True])
def test_ranked_records_are_deterministic_scored_and_wrong(cot):
  task = tasks.ArithmeticTask(ops=("add", "sub", "mul"), max_digits=2, cot=cot)
  records = tasks.generate(task, "train", 40)
  marker = tasks.ANSWER_MARKER if cot else None
  lists = tasks.ranked_records(records, size=5, seed=3, marker=marker)
  assert lists == tasks.ranked_records(records, size=5, seed=3, marker=marker)
  assert lists != tasks.ranked_records(records, size=5, seed=4, marker=marker)
  for r, row in zip(records, lists):
    assert set(row) == {"prompt", "completions", "scores"}
    assert data.detect_format(row) == data.RANKED
    assert row["prompt"] == r["prompt"]
    assert len(row["completions"]) == len(row["scores"]) == 5
    assert row["completions"][0] == r["completion"] and row["scores"][0] == 1.0
    offsets = []
    for text, score in zip(row["completions"][1:], row["scores"][1:]):
      assert tasks.verify(text, r["answer"], cot=cot) == 0.0
      answer = tasks.extract_answer(text, cot=cot)
      assert answer is not None  # well-formed, wrong
      d = decimal.Decimal(answer) - decimal.Decimal(r["answer"])
      assert d == int(d) and 1 <= abs(d) <= 9
      assert score == pytest.approx(1 - abs(int(d)) / 10)
      offsets.append(int(d))
      if cot:  # the reasoning is kept; only the final answer differs
        assert text.rsplit("\n", 1)[0] == r["completion"].rsplit("\n", 1)[0]
    assert len(set(offsets)) == 4, offsets
    assert len(set(row["completions"])) == 5
    assert max(row["scores"][1:]) < row["scores"][0]


def test_ranked_records_list_size_bounds():
  records = tasks.generate(tasks.ArithmeticTask(), "train", 3)
  assert all(len(r["completions"]) == 19
             for r in tasks.ranked_records(records, size=19, seed=0, marker=None))
  for size in (1, 20):
    with pytest.raises(ValueError, match="2..19"):
      tasks.ranked_records(records, size=size, seed=0, marker=None)


def test_arithmetic_training_source_makes_lists_of_list_size():
  task = tasks.Arithmetic(tasks.ArithmeticTask(seed=1), num_train=12, num_eval=4)
  for split, n in (("train", 12), ("eval", 4)):
    source = task.training_source(split, paired=True, seed=5, list_size=3)
    assert len(source) == n
    rows = [source[i].record for i in range(n)]
    assert rows == tasks.ranked_records(task.records(split), size=3, seed=5, marker=None)
  # Without list_size the same task still gives pairs.
  pairs = task.training_source("train", paired=True, seed=5)
  assert data.detect_format(pairs[0].record) == data.PREFERENCE
  # And its lists batch as [B, 3, T].
  pipe = data.build_pipeline(task.training_source("train", paired=True, seed=5, list_size=3),
                             TOK, global_batch_size=4, max_length=16, list_size=3)
  batch = next(iter(pipe))
  assert batch["tokens"].shape[:2] == (4, 3) and batch["list_mask"].all()
  assert np.all(batch["scores"][:, 0] == 1.0) and np.all(batch["scores"][:, 1:] < 1.0)
