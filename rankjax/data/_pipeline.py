"""grain pipelines: rows -> tokenized examples -> padded or packed batches.

    index --shuffle(seed)--> shard [i::n] --repeat--> read + parse + tokenize
      + truncate (threads) --> check (raise, or skip and count) --> pad to a
      length bucket, or pack with segment ids --> batch

Shuffling happens on row indices with one seed shared by every process, then
each process takes every `shard_count`-th index: together the processes see
each row exactly once per epoch, and each epoch is shuffled differently.
Everything is deterministic in the seed, and an iterator's `get_state()`
(JSON-serialisable, checkpointable with grain/orbax) restores it exactly,
including its `DataStats`.

Batches (per process; `global_batch_size / shard_count` rows, int32 unless
noted; T is the bucket, or `max_length` when packing):

  lm, prompt_completion     tokens [B, T], loss_mask [B, T], segment_ids
                            [B, T] (0 = padding; 1.. = example in the row),
                            positions [B, T] (restart per segment)
  unpaired_preference       the same + label [B] (1 = desirable)
  preference                chosen_{tokens,loss_mask,segment_ids,positions},
                            rejected_{...} (both [B, T], same T), margin [B]
                            float32 when the data has margins (0 if missing)
  ranked                    tokens, loss_mask, segment_ids, positions
                            [B, K, T] (candidate k of list b; padded
                            candidates are all padding), scores [B, K]
                            float32, list_mask [B, K] (1 = a real candidate)
  prompt_only               prompt_tokens [B, T] (right-padded),
                            prompt_lengths [B], + each extra column [B]

`loss_mask[b, t]` marks token t as a target (a train step predicts it from
t-1); see `_formats` for why it is 0 on every example's first token.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, NamedTuple, Sequence

import grain
import numpy as np

from rankjax.data import _formats
from rankjax.data._formats import DataError

_TRUNCATION = ("error", "left", "right")
_ON_BAD_ROW = ("error", "skip")
# Rows scanned to detect the format when it is not given.
_DETECT_ROWS = 100
# Skipped rows logged one by one before only counts are (at powers of 2).
_LOGGED_SKIPS = 10

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How rows become batches.

  Attributes:
    global_batch_size: rows per step over all processes; each process yields
      `global_batch_size // shard_count`.
    max_length: longest example (tokens); longer ones follow `truncation`.
      Packed rows have exactly this length.
    format: one of `_formats.FORMAT_NAMES`, or None to detect it from the
      first rows' keys.
    seed: shuffle seed (same on every process).
    shuffle: shuffle rows (each epoch differently).
    num_epochs: passes over the data; None repeats forever (train by steps).
    shard_index, shard_count: this process's shard (`jax.process_index()`,
      `jax.process_count()` in multi-host runs; see `process_shard`).
    truncation: "error" (an over-long row is a bad row), "right" (cut the
      end) or "left" (cut the start). A row left with nothing to train on
      (a prompt that cannot fit) is always a bad row.
    on_bad_row: "error" raises `DataError` (file, line, field); "skip" drops
      the row and counts it in `DataStats.skipped`, by reason.
    packing: pack examples into rows of `max_length` with segment ids
      (lm and prompt_completion only) instead of padding each.
    buckets: lengths (<= max_length) a padded batch may take: the smallest
      one that fits its longest example; `max_length` is always one.
    drop_remainder: drop a last, smaller batch (training wants fixed shapes).
    completion_only_loss: loss only on completions (prompt-completion,
      preference and unpaired formats).
    assistant_only_loss: for conversations, loss only on tokens the chat
      template marks as assistant.
    unpair: read a preference dataset as unpaired rows (chosen -> label 1,
      rejected -> label 0; two examples per row), for KTO.
    read_threads: threads reading and tokenizing rows.
    list_size: ranked data: K, the candidates per list in a batch (shorter
      lists are padded and masked; a longer one is a bad row); 0 = the
      longest list of each batch.
  """

  global_batch_size: int
  max_length: int
  format: str | None = None
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = 1
  shard_index: int = 0
  shard_count: int = 1
  truncation: str = "error"
  on_bad_row: str = "error"
  packing: bool = False
  buckets: tuple[int, ...] = ()
  drop_remainder: bool = True
  completion_only_loss: bool = True
  assistant_only_loss: bool = False
  unpair: bool = False
  read_threads: int = 2
  list_size: int = 0

  def __post_init__(self):
    for name, value, choices in (("truncation", self.truncation, _TRUNCATION),
                                 ("on_bad_row", self.on_bad_row, _ON_BAD_ROW)):
      if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    if self.format is not None:
      _formats.check_format(self.format)
    if not 0 <= self.shard_index < self.shard_count:
      raise ValueError(f"shard_index {self.shard_index} not in "
                       f"[0, shard_count={self.shard_count})")
    if self.global_batch_size <= 0 or self.global_batch_size % self.shard_count:
      raise ValueError(
          f"global_batch_size ({self.global_batch_size}) must be a positive "
          f"multiple of shard_count ({self.shard_count})")
    if self.max_length < 2:
      raise ValueError(f"max_length must be >= 2, got {self.max_length}")
    if any(b < 1 or b > self.max_length for b in self.buckets):
      raise ValueError(f"buckets {self.buckets} must lie in [1, max_length="
                       f"{self.max_length}]")
    if self.list_size < 0:
      raise ValueError(f"list_size must be >= 0, got {self.list_size}")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"num_epochs must be >= 1 or None, got "
                       f"{self.num_epochs}")

  @property
  def batch_size(self) -> int:
    """Rows per batch on this process."""
    return self.global_batch_size // self.shard_count


def process_shard() -> dict[str, int]:
  """`shard_index`/`shard_count` for this JAX process (multi-host runs)."""
  import jax  # pylint: disable=g-import-not-at-top
  return {"shard_index": jax.process_index(),
          "shard_count": jax.process_count()}


# ---------------------------------------------------------------------------
# Counting what happens to rows.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class DataStats:
  """What an iterator did with the rows it read (restored with its state).

  Attributes:
    rows: rows read.
    examples: rows that became examples (an unpaired pair counts twice).
    skipped: {reason: count} of bad rows skipped (`on_bad_row="skip"`);
      reasons are `DataError.reason` codes.
    truncated_left, truncated_right: examples cut to `max_length`.
  """

  rows: int = 0
  examples: int = 0
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  truncated_left: int = 0
  truncated_right: int = 0

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def load(self, state: dict[str, Any]) -> None:
    for f in dataclasses.fields(self):
      value = state[f.name]
      setattr(self, f.name, dict(value) if isinstance(value, dict) else value)

  def __str__(self) -> str:
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
    return (f"{self.rows} rows read, {self.examples} examples, "
            f"{self.num_skipped} skipped ({skipped or 'none'}), truncated "
            f"{self.truncated_left} left / {self.truncated_right} right")


class _Result(NamedTuple):
  """A row after tokenization: an example, or why it is bad."""
  example: dict[str, Any] | None
  error: DataError | None = None
  truncated: str | None = None


# ---------------------------------------------------------------------------
# Row -> example.
# ---------------------------------------------------------------------------

_SEQUENCES = (("tokens", "loss_mask"), ("chosen_tokens", "chosen_loss_mask"),
              ("rejected_tokens", "rejected_loss_mask"),
              ("prompt_tokens", None))


def _field_name(tokens_key: str, fmt: str) -> str:
  if tokens_key == "tokens":
    return "text" if fmt == _formats.LM else "completion"
  return tokens_key[:-len("_tokens")]


def truncate_example(example: dict[str, Any], max_length: int, policy: str,
                     fmt: str) -> tuple[dict[str, Any], str | None]:
  """Cuts every sequence of an example to `max_length` per `policy`.

  Returns the example and "left"/"right" if anything was cut.

  Raises:
    DataError: reason "too_long" when `policy == "error"` and a sequence is
      too long, or when cutting leaves no token to train on (a prompt that
      cannot fit).
  """
  out, cut = dict(example), None
  for tokens_key, mask_key in _SEQUENCES:
    if tokens_key not in out or len(out[tokens_key]) <= max_length:
      continue
    n = len(out[tokens_key])
    field = _field_name(tokens_key, fmt)
    if policy == "error":
      raise DataError(f"{n} tokens exceed max_length={max_length} "
                      "(truncation='error')", field=field, reason="too_long")
    keep = (slice(None, max_length) if policy == "right"
            else slice(n - max_length, None))
    out[tokens_key] = out[tokens_key][keep]
    cut = policy
    if mask_key is None:
      continue
    mask = out[mask_key][keep].copy()
    mask[0] = 0  # the new first token is not predicted either
    out[mask_key] = mask
    if not mask.any():
      targets = np.flatnonzero(example[mask_key])
      if policy == "right":
        raise DataError(
            f"the prompt ({targets[0]} tokens) leaves no room for the "
            f"completion within max_length={max_length} (truncation='right')",
            field="prompt", reason="too_long")
      raise DataError(
          f"the completion ({n - targets[0]} tokens) does not fit "
          f"max_length={max_length} (truncation='left')", field=field,
          reason="too_long")
  return out, cut


def _make_example(index: int, *, source, tokenizer, fmt: str,
                  config: PipelineConfig) -> _Result:
  """Reads, parses, tokenizes and truncates one row; never raises DataError
  (the checking stage decides whether a bad row stops the run)."""
  if config.unpair:
    index, side = divmod(int(index), 2)
  location = None
  try:
    row = source[index]
    location = row.location
    record = _formats.parse_record(
        row.record, _formats.PREFERENCE if config.unpair else fmt,
        location=location)
    if config.unpair:
      record = _formats.unpair_preference(record)[side]
    example = _formats.tokenize(
        record, tokenizer, completion_only_loss=config.completion_only_loss,
        assistant_only_loss=config.assistant_only_loss)
    if "candidates" in example:
      return _ranked_example(example, config)
    example, cut = truncate_example(example, config.max_length,
                                    config.truncation, fmt)
    return _Result(example, truncated=cut)
  except DataError as e:
    return _Result(None, error=e.with_location(location) if location else e)


def _ranked_example(example: dict[str, Any], config: PipelineConfig) -> _Result:
  """Checks a ranked list's size and truncates each candidate."""
  k = len(example["candidates"])
  if config.list_size and k > config.list_size:
    raise DataError(f"{k} completions exceed the list size {config.list_size} "
                    "(listwise.list_size)", field="completions", reason="too_long")
  candidates, cut = [], None
  for i, candidate in enumerate(example["candidates"]):
    try:
      candidate, c = truncate_example(candidate, config.max_length, config.truncation,
                                      _formats.PROMPT_COMPLETION)
    except DataError as e:
      field = f"completions[{i}]" if e.field == "completion" else e.field
      raise DataError(e.message, field=field, reason=e.reason) from e
    candidates.append(candidate)
    cut = cut or c
  return _Result(dict(example, candidates=candidates), truncated=cut)


class _CheckedIterator(grain.DatasetIterator):
  """Raises on bad rows, or skips and counts them; counts truncations."""

  def __init__(self, parent, *, stats: DataStats, on_bad_row: str,
               rows_per_epoch: int):
    super().__init__(parent)
    self._data_stats = stats
    self._on_bad_row = on_bad_row
    self._rows_per_epoch = rows_per_epoch
    self._bad_in_a_row = 0

  def __next__(self):
    while True:
      result = next(self._parent)
      self._data_stats.rows += 1
      if result.error is None:
        break
      if self._on_bad_row == "error":
        raise result.error
      self._skip(result.error)
    self._bad_in_a_row = 0
    self._data_stats.examples += 1
    if result.truncated == "left":
      self._data_stats.truncated_left += 1
    elif result.truncated == "right":
      self._data_stats.truncated_right += 1
    return result.example

  def _skip(self, error: DataError) -> None:
    stats = self._data_stats
    stats.skipped[error.reason] = stats.skipped.get(error.reason, 0) + 1
    n = stats.num_skipped
    if n <= _LOGGED_SKIPS:
      _log.warning("rankjax.data: skipping bad row (%d so far): %s", n,
                      error)
    elif n & (n - 1) == 0:
      _log.warning("rankjax.data: %d bad rows skipped so far: %s", n, stats)
    self._bad_in_a_row += 1
    # With num_epochs=None a dataset of bad rows would otherwise spin forever.
    if self._bad_in_a_row >= self._rows_per_epoch:
      raise DataError(
          f"every row of a whole epoch ({self._rows_per_epoch} rows on this "
          f"shard) was bad, so there is nothing to train on ({stats}); last: "
          f"{error}", reason="empty")

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(),
            "stats": self._data_stats.as_dict(),
            "bad_in_a_row": self._bad_in_a_row}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._data_stats.load(state["stats"])
    self._bad_in_a_row = state["bad_in_a_row"]


class _Checked(grain.IterDataset):

  def __init__(self, parent, **kwargs):
    super().__init__(parent)
    self._kwargs = kwargs

  def __iter__(self):
    return _CheckedIterator(self._parent.__iter__(), **self._kwargs)


# ---------------------------------------------------------------------------
# Padding, packing, batching.
# ---------------------------------------------------------------------------


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length (buckets sorted ascending)."""
  for b in buckets:
    if b >= length:
      return b
  raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def _pad(rows: Sequence[np.ndarray], length: int, value: int) -> np.ndarray:
  out = np.full((len(rows), length), value, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def sequence_batch(examples, prefix: str, length: int, pad_id: int):
  """tokens/loss_mask/segment_ids/positions of unpacked examples: one
  segment per row, so the same train step serves packed and padded data."""
  tokens = [e[f"{prefix}tokens"] for e in examples]
  real = _pad([np.ones(len(t), np.int32) for t in tokens], length, 0)
  return {
      f"{prefix}tokens": _pad(tokens, length, pad_id),
      f"{prefix}loss_mask": _pad([e[f"{prefix}loss_mask"] for e in examples],
                                 length, 0),
      f"{prefix}segment_ids": real,
      f"{prefix}positions": ((np.cumsum(real, axis=1) - 1) * real).astype(
          np.int32),
  }


def _column(values: list[Any]) -> np.ndarray:
  """A passthrough column: numeric/str arrays when uniform, else objects."""
  if values and (all(isinstance(v, str) for v in values) or all(
      isinstance(v, (bool, int, float, np.generic)) for v in values)):
    return np.asarray(values)
  out = np.empty(len(values), dtype=object)
  out[:] = values
  return out


def _ranked_batch(examples, *, buckets, pad_id: int, list_size: int):
  """[B, K, T] candidates (K = list_size, or the longest list), scores and
  list_mask [B, K]; a padded slot is one padding token row, masked out."""
  k = list_size or max(len(e["candidates"]) for e in examples)
  length = bucket_length(max(len(c["tokens"]) for e in examples for c in e["candidates"]),
                         buckets)
  empty = {"tokens": np.zeros(0, np.int32), "loss_mask": np.zeros(0, np.int32)}
  flat = [c for e in examples for c in (*e["candidates"], *[empty] * (k - len(e["candidates"])))]
  out = {key: value.reshape(len(examples), k, length)
         for key, value in sequence_batch(flat, "", length, pad_id).items()}
  out["scores"] = np.zeros((len(examples), k), np.float32)
  out["list_mask"] = np.zeros((len(examples), k), np.int32)
  for b, e in enumerate(examples):
    out["scores"][b, :len(e["scores"])] = e["scores"]
    out["list_mask"][b, :len(e["scores"])] = 1
  return out


def _batch(examples: Sequence[dict[str, Any]], *, fmt: str,
           buckets: Sequence[int], pad_id: int, list_size: int = 0) -> dict[str, np.ndarray]:
  """Pads a list of examples to the smallest bucket that fits them all."""
  if fmt == _formats.PROMPT_ONLY:
    prompts = [e["prompt_tokens"] for e in examples]
    out = {"prompt_tokens": _pad(prompts, bucket_length(
        max(len(p) for p in prompts), buckets), pad_id),
           "prompt_lengths": np.asarray([len(p) for p in prompts], np.int32)}
    keys = dict.fromkeys(k for e in examples for k in e if k != "prompt_tokens")
    for k in keys:
      out[k] = _column([e.get(k) for e in examples])
    return out
  if fmt == _formats.RANKED:
    return _ranked_batch(examples, buckets=buckets, pad_id=pad_id, list_size=list_size)
  prefixes = (("chosen_", "rejected_") if fmt == _formats.PREFERENCE
              else ("",))
  length = bucket_length(max(len(e[f"{p}tokens"]) for e in examples
                             for p in prefixes), buckets)
  out = {}
  for p in prefixes:
    out.update(sequence_batch(examples, p, length, pad_id))
  if "label" in examples[0]:
    out["label"] = np.asarray([e["label"] for e in examples], np.int32)
  if any("margin" in e for e in examples):
    out["margin"] = np.asarray([e.get("margin", 0.0) for e in examples],
                               np.float32)
  return out


def _rename_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """grain's packer names segment ids and positions per feature."""
  return {"tokens": row["tokens"], "loss_mask": row["loss_mask"],
          "segment_ids": row["tokens_segment_ids"],
          "positions": row["tokens_positions"]}


# ---------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------


class DataIterator(grain.DatasetIterator):
  """Batches, with `stats` (a live `DataStats`) and exact `get_state()` /
  `set_state()` (JSON-serialisable; grain's orbax handler can save it).

  `stats` counts rows as the pipeline reads them. The packer reads ahead
  and, after `set_state`, re-reads the pack it was emitting, so right after
  a restore a packed pipeline's counts may lag the saved run's by that pack;
  they agree again once the pack has been re-read.
  """

  def __init__(self, parent, stats: DataStats):
    super().__init__(parent)
    self.stats = stats

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      return next(self._parent)
    except StopIteration:
      _log.info("rankjax.data: epoch(s) done: %s", self.stats)
      raise

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


def _detect(source, on_bad_row: str) -> str:
  """The format of the first readable rows (bad ones skipped if allowed)."""
  first = None
  for i in range(min(len(source), _DETECT_ROWS)):
    try:
      row = source[i]
    except DataError:
      if on_bad_row == "error":
        raise
      continue
    fmt = (_formats.detect_format(row.record)
           if isinstance(row.record, dict) else None)
    if fmt is not None:
      return fmt
    if on_bad_row == "error":
      if not isinstance(row.record, dict):
        raise DataError(f"a row must be a JSON object, got "
                        f"{type(row.record).__name__}", location=row.location,
                        reason="wrong_type")
      raise _formats.unknown_format_error(row.record, row.location)
    first = first or row
  if first is not None and isinstance(first.record, dict):
    raise _formats.unknown_format_error(first.record, first.location)
  raise DataError(f"none of the first {_DETECT_ROWS} rows of {source!r} can "
                  "be read as a record", reason="unreadable")


class Pipeline:
  """A source + tokenizer + config; iterate it for batches.

  Construction checks everything that can fail before training starts:
  the config, the format, and that at least one batch comes out (reading
  rows until it does). An empty dataset, or one whose every row is bad or
  too short for a single batch, raises `DataError` here.

  Attributes:
    format: the record format read (detected unless configured).
    example_format: the format of the examples (unpaired when `unpair`).
    num_rows: rows in the source.
  """

  def __init__(self, source, tokenizer, config: PipelineConfig):
    self.source = source
    self.tokenizer = tokenizer
    self.config = config
    self.num_rows = len(source)
    if self.num_rows == 0:
      raise DataError(f"the dataset is empty: {source!r} has no rows",
                      reason="empty")
    self.format = config.format or _detect(source, config.on_bad_row)
    if config.unpair and self.format != _formats.PREFERENCE:
      raise ValueError(f"unpair=True needs preference rows, got {self.format}")
    self.example_format = (_formats.UNPAIRED_PREFERENCE if config.unpair
                           else self.format)
    if config.packing and self.example_format not in (
        _formats.LM, _formats.PROMPT_COMPLETION):
      raise DataError(f"packing supports lm and prompt_completion data; {source!r} "
                      f"holds {self.example_format} rows", reason="unknown_format")
    self._num_items = self.num_rows * (2 if config.unpair else 1)
    self.rows_per_epoch = len(range(config.shard_index, self._num_items,
                                    config.shard_count))
    if self.rows_per_epoch == 0:
      raise DataError(
          f"shard {config.shard_index} of {config.shard_count} gets no rows: "
          f"the dataset has only {self._num_items}", reason="empty")
    self._buckets = tuple(sorted(set(config.buckets) | {config.max_length}))
    probe = iter(self)
    try:
      next(probe)
    except StopIteration:
      raise DataError(
          f"the dataset yields no batch of {config.batch_size} rows "
          f"(drop_remainder={config.drop_remainder}): {probe.stats}",
          reason="empty") from None

  def _examples(self, stats: DataStats) -> grain.IterDataset:
    cfg = self.config
    ds = grain.MapDataset.range(self._num_items)
    if cfg.shuffle:
      ds = ds.shuffle(seed=cfg.seed)
    ds = ds[cfg.shard_index::cfg.shard_count]
    if cfg.num_epochs != 1:
      ds = ds.repeat(cfg.num_epochs)
    ds = ds.map(functools.partial(
        _make_example, source=self.source, tokenizer=self.tokenizer,
        fmt=self.format, config=cfg))
    read = grain.ReadOptions(num_threads=cfg.read_threads,
                             prefetch_buffer_size=4 * cfg.batch_size)
    return _Checked(ds.to_iter_dataset(read), stats=stats,
                    on_bad_row=cfg.on_bad_row,
                    rows_per_epoch=self.rows_per_epoch)

  def dataset(self, stats: DataStats | None = None) -> grain.IterDataset:
    """The batched grain dataset (its iterators update `stats`)."""
    cfg = self.config
    ds = self._examples(stats if stats is not None else DataStats())
    if cfg.packing:
      ds = grain.experimental.FirstFitPackIterDataset(
          ds, length_struct={"tokens": cfg.max_length,
                             "loss_mask": cfg.max_length},
          num_packing_bins=cfg.batch_size, shuffle_bins=False,
          padding_struct={"tokens": self.tokenizer.pad_id, "loss_mask": 0})
      return ds.map(_rename_packed).batch(cfg.batch_size,
                                          drop_remainder=cfg.drop_remainder)
    return ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder,
                    batch_fn=functools.partial(
                        _batch, fmt=self.example_format,
                        buckets=self._buckets, pad_id=self.tokenizer.pad_id,
                        list_size=cfg.list_size))

  def __iter__(self) -> DataIterator:
    stats = DataStats()
    return DataIterator(self.dataset(stats).__iter__(), stats)


def build_pipeline(source, tokenizer, config: PipelineConfig | None = None,
                   **overrides) -> Pipeline:
  """`Pipeline(source, tokenizer, PipelineConfig(...))` with keyword
  overrides: `build_pipeline(src, tok, global_batch_size=8, max_length=512)`.
  """
  if config is None:
    config = PipelineConfig(**overrides)
  elif overrides:
    config = dataclasses.replace(config, **overrides)
  return Pipeline(source, tokenizer, config)
