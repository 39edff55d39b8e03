"""grain pipelines: batches, packing, resume, sharding, TFDS, bad rows."""

import collections
import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import data
from rankjax import testing
from rankjax.data import DataError
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()


def sums(n, start=0):
  return [{"prompt": f"{i}+{i}=", "completion": str(2 * i), "id": i}
          for i in range(start, start + n)]


def write_jsonl(path, rows):
  """Rows are dicts (dumped) or raw bytes lines (written as they are)."""
  with open(path, "wb") as f:
    for r in rows:
      f.write(r if isinstance(r, bytes) else json.dumps(r).encode())
      f.write(b"\n")
  return str(path)


def pipeline(rows_or_source, **kw):
  source = (data.RecordSource(rows_or_source)
            if isinstance(rows_or_source, list) else rows_or_source)
  kw = {"global_batch_size": 4, "max_length": 16, **kw}
  return data.build_pipeline(source, TOK, **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# -- batch contents ------------------------------------------------------------


def test_padded_batch_uses_smallest_fitting_bucket():
  rows = [{"prompt": "1+1=", "completion": "2"}] * 4  # 7 tokens each
  batch = next(iter(pipeline(rows, buckets=(4, 8), shuffle=False)))
  assert batch["tokens"].shape == (4, 8)
  np.testing.assert_array_equal(batch["segment_ids"][0],
                                [1] * 7 + [0])
  np.testing.assert_array_equal(batch["positions"][0],
                                [0, 1, 2, 3, 4, 5, 6, 0])
  assert batch["tokens"][0, -1] == TOK.pad_id
  assert all(v.dtype == np.int32 for v in batch.values())
  long_rows = [{"prompt": "12+12=", "completion": "24"}] * 4  # 10 tokens
  batch = next(iter(pipeline(long_rows, buckets=(4, 8), shuffle=False)))
  assert batch["tokens"].shape == (4, 16)  # max_length is always a bucket


def test_preference_batch_pads_both_sides_alike():
  rows = [{"prompt": "q", "chosen": "a" * i, "rejected": "b", "margin": 0.5}
          for i in range(1, 5)]
  b = next(iter(pipeline(rows, shuffle=False)))
  assert b["chosen_tokens"].shape == b["rejected_tokens"].shape == (4, 16)
  for side in ("chosen", "rejected"):
    assert {f"{side}_{k}" for k in ("tokens", "loss_mask", "segment_ids",
                                    "positions")} <= b.keys()
  np.testing.assert_array_equal(b["margin"], [0.5] * 4)
  assert b["margin"].dtype == np.float32


def test_unpair_reads_preference_as_labelled_rows():
  rows = [{"prompt": "q", "chosen": "good", "rejected": "bad"}] * 2
  b = next(iter(pipeline(rows, unpair=True, shuffle=False)))
  np.testing.assert_array_equal(b["label"], [1, 0, 1, 0])
  assert TOK.decode(b["tokens"][1]) == "qbad"


def test_prompt_only_batch_keeps_columns():
  b = next(iter(pipeline(sums(4), format="prompt_only", shuffle=False)))
  np.testing.assert_array_equal(b["prompt_lengths"], [5, 5, 5, 5])
  assert list(b["completion"]) == ["0", "2", "4", "6"]
  np.testing.assert_array_equal(b["id"], [0, 1, 2, 3])
  assert TOK.decode(b["prompt_tokens"][1]) == "1+1="


# -- packing -------------------------------------------------------------------


def test_packed_rows_never_attend_across_segments():
  rows = [{"prompt": "3*4=", "completion": "12"},
          {"prompt": "10-7=", "completion": "3"},
          {"prompt": "1+1=", "completion": "2"}]
  pipe = pipeline(rows, global_batch_size=1, max_length=32, packing=True,
                  shuffle=False)
  b = next(iter(pipe))
  seg = b["segment_ids"][0]
  assert set(seg) == {0, 1, 2, 3}  # three examples and padding in one row
  model = testing.tiny_model("llama")
  packed = np.asarray(model(jnp.asarray(b["tokens"]),
                            segment_ids=jnp.asarray(b["segment_ids"]),
                            positions=jnp.asarray(b["positions"])))[0]
  examples = [data.tokenize(data.parse_record(r), TOK) for r in rows]
  # Each example alone, right-padded into one batch (one compile): causal
  # attention never lets a position see the padding after it.
  alone = np.zeros((len(rows), 32), np.int32)
  for i, ex in enumerate(examples):
    alone[i, :len(ex["tokens"])] = ex["tokens"]
  alone = np.asarray(model(jnp.asarray(alone)))
  for s, ex in enumerate(examples, start=1):
    n = len(ex["tokens"])
    np.testing.assert_array_equal(b["tokens"][0][seg == s], ex["tokens"])
    np.testing.assert_array_equal(b["loss_mask"][0][seg == s], ex["loss_mask"])
    np.testing.assert_allclose(packed[seg == s], alone[s - 1, :n], atol=1e-5)


# -- resume and sharding -------------------------------------------------------


@pytest.mark.parametrize("packing", [False, True])
def test_restored_state_replays_the_same_batches(packing):
  rows = sums(30) + [{"prompt": "bad", "completion": ""}] * 3
  pipe = pipeline(rows, packing=packing, num_epochs=None, seed=3,
                  on_bad_row="skip")
  it = iter(pipe)
  take(it, 2)
  state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
  stats = it.stats.as_dict()
  expected = take(it, 5)
  expected_stats = it.stats.as_dict()
  resumed = iter(pipe)
  resumed.set_state(state)
  if not packing:  # the packer re-reads its unfinished pack after a restore
    assert resumed.stats.as_dict() == stats
  assert_batches_equal(take(resumed, 5), expected)
  assert resumed.stats.as_dict() == expected_stats


def test_same_seed_same_order_other_seed_other_order():
  first = lambda seed: next(iter(pipeline(sums(20), seed=seed)))["tokens"]
  np.testing.assert_array_equal(first(1), first(1))
  assert not np.array_equal(first(1), first(2))


def test_shards_cover_every_row_once_per_epoch():
  n, shards = 10, 3
  per_shard = []
  for k in range(shards):
    pipe = pipeline(sums(n), format="prompt_only", global_batch_size=shards,
                    shard_index=k, shard_count=shards, num_epochs=2, seed=5,
                    drop_remainder=False)
    ids = [int(i) for b in pipe for i in b["id"]]
    per_shard.append(ids)
  epoch_len = [len(range(k, n, shards)) for k in range(shards)]
  for epoch in range(2):
    seen = collections.Counter()
    for ids, m in zip(per_shard, epoch_len):
      seen.update(ids[epoch * m:(epoch + 1) * m])
    assert seen == collections.Counter(range(n))
  first_epoch = [ids[:m] for ids, m in zip(per_shard, epoch_len)]
  second_epoch = [ids[m:] for ids, m in zip(per_shard, epoch_len)]
  assert first_epoch != second_epoch  # reshuffled


# -- sources -------------------------------------------------------------------


def test_tfds_array_record_without_tensorflow(tmp_path):
  with pytest.raises(ImportError):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  rows = sums(12) + [b"\xff\xfe not utf-8"]
  path = write_jsonl(tmp_path / "train.jsonl", rows)
  out = data.prepare_tfds(path, name="sums", data_dir=tmp_path / "tfds")
  assert data.prepare_tfds(path, name="sums",
                           data_dir=tmp_path / "tfds") == out  # built once
  source = data.load_tfds("sums", data_dir=tmp_path / "tfds")
  assert "tensorflow" not in sys.modules
  assert len(source) == 13
  row = source[3]
  assert row.record == sums(12)[3] and (row.file, row.line) == (path, 4)
  with pytest.raises(DataError, match=f"{path}:13: invalid UTF-8"):
    source[12]
  kw = dict(on_bad_row="skip", global_batch_size=3, seed=1)
  from_tfds = list(pipeline(source, **kw))
  from_jsonl = list(pipeline(data.JsonlSource(path), **kw))
  assert len(from_tfds) == 4
  assert_batches_equal(from_tfds, from_jsonl)
  # Changed files are not silently served from the old conversion.
  write_jsonl(path, sums(5))
  with pytest.raises(ValueError, match="overwrite=True"):
    data.prepare_tfds(path, name="sums", data_dir=tmp_path / "tfds")


def test_any_prepared_tfds_dataset_loads_by_name(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class Sums(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums file next to a test

    def _info(self):
      features = tfds.features.FeaturesDict({
          "prompt": tfds.features.Text(), "completion": tfds.features.Text(),
          "id": tfds.features.Scalar(np.int64)})
      return tfds.core.DatasetInfo(builder=self, features=features,
                                   disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for row in sums(8):
        yield row["id"], row

  builder = Sums(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  source = data.load_tfds("sums", data_dir=tmp_path)
  assert source[2].record == sums(8)[2]
  assert source[2].location == "tfds:sums/train:3"
  batch = next(iter(pipeline(source, format="prompt_only", shuffle=False)))
  np.testing.assert_array_equal(batch["id"], [0, 1, 2, 3])
  with pytest.raises(FileNotFoundError, match="not prepared|no prepared"):
    data.load_tfds("sums", data_dir=tmp_path / "elsewhere")


def test_parquet_source_locates_rows(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  rows = sums(5)
  rows[3]["completion"] = ""
  path = str(tmp_path / "d.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
  source = data.open_source(str(tmp_path / "*.parquet"))
  assert len(source) == 5 and source[4].record == rows[4]
  with pytest.raises(DataError, match=f"{path}:4: field 'completion': empty"):
    pipeline(source, shuffle=False)


# -- bad rows ------------------------------------------------------------------

GOOD = {"prompt": "1+1=", "completion": "2"}
BAD_ROWS = [
    ({"prompt": "1+1="}, "completion", "missing_field"),
    ({"prompt": "1+1=", "completion": 2}, "completion", "wrong_type"),
    ({"prompt": "1+1=", "completion": ""}, "completion", "empty"),
    (b'{"prompt": "1+1=", "completion": "\xff"}', None, "unreadable"),
    (b'{"prompt": "1+1=", ', None, "unreadable"),
    ({"prompt": "9" * 40, "completion": "2"}, "prompt", "too_long"),
]


@pytest.mark.parametrize("bad,field,reason", BAD_ROWS)
def test_bad_row_error_names_file_line_and_field(tmp_path, bad, field, reason):
  path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad, GOOD])
  with pytest.raises(DataError) as e:
    pipeline(data.JsonlSource(path), shuffle=False, truncation="right")
  assert str(e.value).startswith(f"{path}:3: ")
  assert e.value.reason == reason and e.value.field == field
  if field:
    assert f"field {field!r}" in str(e.value)


def test_skipped_rows_are_counted(tmp_path, caplog):
  rows = [GOOD] * 8 + [bad for bad, _, _ in BAD_ROWS]
  path = write_jsonl(tmp_path / "d.jsonl", rows)
  it = iter(pipeline(data.JsonlSource(path), on_bad_row="skip",
                     truncation="right", global_batch_size=1))
  assert len(list(it)) == 8
  assert it.stats.skipped == {"missing_field": 1, "wrong_type": 1, "empty": 1,
                              "unreadable": 2, "too_long": 1}
  assert it.stats.rows == 14 and it.stats.examples == 8
  assert "skipping bad row" in caplog.text  # logged, not silent


def test_empty_dataset_fails_at_construction(tmp_path):
  with pytest.raises(DataError, match="empty"):
    pipeline(data.JsonlSource(write_jsonl(tmp_path / "e.jsonl", [])))
  with pytest.raises(DataError, match="no batch"):
    pipeline([GOOD] * 3)  # fewer rows than one batch
  all_bad = [{"prompt": "q", "completion": ""}] * 5
  with pytest.raises(DataError, match="every row of a whole epoch"):
    pipeline(all_bad, on_bad_row="skip")
  with pytest.raises(DataError, match="every row of a whole epoch"):
    pipeline(all_bad, on_bad_row="skip", num_epochs=None)  # does not hang


# -- truncation ----------------------------------------------------------------


def test_truncation_policies_are_counted():
  rows = [{"prompt": "12345=", "completion": "abcdefghij"}] * 2 + [GOOD] * 2
  # 18 tokens each for the long rows: BOS + 6 + 10 + EOS.
  for policy in ("left", "right"):
    it = iter(pipeline(rows, truncation=policy, max_length=12, shuffle=False))
    b = next(it)
    assert b["tokens"].shape == (4, 12)
    assert getattr(it.stats, f"truncated_{policy}") == 2
    assert it.stats.as_dict()[
        "truncated_right" if policy == "left" else "truncated_left"] == 0
    text = TOK.decode(b["tokens"][0])
    assert text == {"left": "=abcdefghij", "right": "12345=abcde"}[policy]
    assert b["loss_mask"][0, 0] == 0
  with pytest.raises(DataError, match="18 tokens exceed max_length=12"):
    pipeline(rows, max_length=12, shuffle=False)
