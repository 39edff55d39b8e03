"""Random-access row sources: JSONL, Parquet, in-memory lists and TFDS.

Every source has `__len__` and `__getitem__(i) -> Row` (grain's
`RandomAccessDataSource` protocol), and every `Row` remembers the file and
line it came from, so an error about its content can point at it.

Reading large files by random access (for a global shuffle) is what
ArrayRecord is for: `prepare_tfds` converts JSONL/Parquet once into a TFDS
dataset stored as ArrayRecord, and `load_tfds` reads it (or any other TFDS
dataset prepared as ArrayRecord) back by index. Neither needs TensorFlow:
TFDS writes and reads ArrayRecord with numpy alone.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import json
import logging
import os
import re
import shutil
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from rankjax.data._formats import DataError

Paths = str | os.PathLike | Sequence[str | os.PathLike]

_JSONL_EXTS = (".jsonl", ".json")
_PARQUET_EXTS = (".parquet",)


class DataFileNotFoundError(DataError, FileNotFoundError):
  """Data files that do not exist: a DataError for the launcher's one-line
  report, and a FileNotFoundError as it always was."""

  def __init__(self, message: str):
    super().__init__(message, reason="unreadable")


@dataclasses.dataclass(frozen=True)
class Row:
  """One raw record and where it came from (`line` is 1-based)."""
  record: Any
  file: str
  line: int

  @property
  def location(self) -> str:
    return f"{self.file}:{self.line}"


def expand_paths(paths: Paths) -> list[str]:
  """Files named by paths or glob patterns, each pattern's matches sorted.

  Raises:
    DataFileNotFoundError: a path or pattern matches nothing.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  files = []
  for p in paths:
    p = os.fspath(p)
    matches = sorted(glob.glob(p)) if glob.has_magic(p) else (
        [p] if os.path.exists(p) else [])
    if not matches:
      raise DataFileNotFoundError(f"no data file matches {p!r}")
    files += [os.path.abspath(m) for m in matches]
  return list(dict.fromkeys(files))


# ---------------------------------------------------------------------------
# JSONL.
# ---------------------------------------------------------------------------


def _index_lines(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(byte offsets, 1-based line numbers) of the non-blank lines."""
  offsets, lines = [], []
  offset = 0
  with open(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      if line.strip():
        offsets.append(offset)
        lines.append(number)
      offset += len(line)
  return np.asarray(offsets, np.int64), np.asarray(lines, np.int64)


def parse_json_line(raw: bytes, location: str) -> Any:
  """Decodes one JSON Lines row; bad bytes or JSON raise a DataError."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"invalid UTF-8 at byte {e.start} of the line ({e.reason})",
                    location=location, reason="unreadable") from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"invalid JSON: {e}", location=location,
                    reason="unreadable") from e


class JsonlSource:
  """Rows of JSON Lines files (`.jsonl`, or `.json` holding JSON Lines).

  Blank lines are not rows. Opening indexes every line's byte offset (one
  pass over the files); reads seek straight to a line, so any order costs
  the same. Undecodable bytes and invalid JSON raise `DataError` at read
  time, naming the file and line.
  """

  def __init__(self, paths: Paths):
    self.files = expand_paths(paths)
    indexed = [_index_lines(f) for f in self.files]
    self._file = np.concatenate(
        [np.full(len(o), k, np.int32) for k, (o, _) in enumerate(indexed)]
        or [np.zeros(0, np.int32)])
    self._offset = np.concatenate([o for o, _ in indexed] or
                                  [np.zeros(0, np.int64)])
    self._line = np.concatenate([n for _, n in indexed] or
                                [np.zeros(0, np.int64)])

  def __len__(self) -> int:
    return len(self._offset)

  def where(self, i: int) -> tuple[str, int]:
    """(file, line) of row i, without reading it."""
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"row {i} out of range for {len(self)} rows")
    return self.files[self._file[i]], int(self._line[i])

  def raw(self, i: int) -> bytes:
    """The row's bytes as stored (for conversion; not yet decoded)."""
    path, _ = self.where(i)
    with open(path, "rb") as f:
      f.seek(int(self._offset[i]))
      return f.readline().rstrip(b"\r\n")

  def __getitem__(self, i: int) -> Row:
    path, line = self.where(i)
    return Row(parse_json_line(self.raw(i), f"{path}:{line}"), path, line)

  def __repr__(self) -> str:
    return _files_repr(self, self.files)


# ---------------------------------------------------------------------------
# Parquet.
# ---------------------------------------------------------------------------


class ParquetSource:
  """Rows of Parquet files; `line` is the 1-based row number in its file.

  Reads decode one row group at a time and keep the last few, so sequential
  access is cheap; a global shuffle over many row groups is not (convert
  with `prepare_tfds` for that).
  """

  _CACHED_GROUPS = 8

  def __init__(self, paths: Paths):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    self.files = expand_paths(paths)
    # One entry per row group: (file index, group index, first row in file).
    groups, starts = [], [0]
    for k, path in enumerate(self.files):
      meta = pq.ParquetFile(path).metadata
      first = 0
      for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if n:
          groups.append((k, g, first))
          starts.append(starts[-1] + n)
        first += n
    self._groups = groups
    self._starts = np.asarray(starts, np.int64)
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _group_rows(self, g: int) -> list[dict]:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    with self._lock:
      if g in self._cache:
        self._cache.move_to_end(g)
        return self._cache[g]
    k, group, _ = self._groups[g]
    rows = pq.ParquetFile(self.files[k]).read_row_group(group).to_pylist()
    with self._lock:
      self._cache[g] = rows
      while len(self._cache) > self._CACHED_GROUPS:
        self._cache.popitem(last=False)
    return rows

  def _locate(self, i: int) -> tuple[int, int]:
    """(row group, row within it) of row i."""
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"row {i} out of range for {len(self)} rows")
    g = int(np.searchsorted(self._starts, i, side="right")) - 1
    return g, i - int(self._starts[g])

  def where(self, i: int) -> tuple[str, int]:
    """(file, 1-based row number in it) of row i, without reading it."""
    g, j = self._locate(i)
    k, _, first = self._groups[g]
    return self.files[k], first + j + 1

  def __getitem__(self, i: int) -> Row:
    g, j = self._locate(i)
    path, line = self.where(i)
    return Row(self._group_rows(g)[j], path, line)

  def raw(self, i: int) -> bytes:
    return json.dumps(self[i].record, default=_json_default,
                      ensure_ascii=False).encode("utf-8")

  def __repr__(self) -> str:
    return _files_repr(self, self.files)


def _files_repr(source, files: Sequence[str]) -> str:
  """`JsonlSource(/data/a.jsonl: 12 rows)`: errors about a whole source (an
  empty one) name its files."""
  shown = files[0] if len(files) == 1 else (
      f"{len(files)} files: {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}")
  return f"{type(source).__name__}({shown}: {len(source)} rows)"


def _json_default(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  return str(value)


# ---------------------------------------------------------------------------
# In memory.
# ---------------------------------------------------------------------------


class RecordSource:
  """Rows from a Python sequence (generated tasks, tests); `line` = index+1."""

  def __init__(self, records: Sequence[Any], name: str = "<records>"):
    self._records = records
    self.name = name

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> Row:
    i = int(i)
    return Row(self._records[i], self.name, i + 1)

  def raw(self, i: int) -> bytes:
    return json.dumps(self._records[int(i)], default=_json_default,
                      ensure_ascii=False).encode("utf-8")


def open_source(paths: Paths) -> JsonlSource | ParquetSource:
  """A source for local files, chosen by extension (all must agree)."""
  files = expand_paths(paths)
  kinds = {"jsonl" if f.endswith(_JSONL_EXTS) else
           "parquet" if f.endswith(_PARQUET_EXTS) else f for f in files}
  if kinds == {"jsonl"}:
    return JsonlSource(files)
  if kinds == {"parquet"}:
    return ParquetSource(files)
  raise DataError(
      f"data files must all be JSON Lines ({', '.join(_JSONL_EXTS)}) or all "
      f"Parquet ({', '.join(_PARQUET_EXTS)}); got {sorted(kinds)}")


# ---------------------------------------------------------------------------
# TFDS / ArrayRecord.
# ---------------------------------------------------------------------------

# Features of a converted dataset: the row as JSON text plus its origin.
_JSON_ROW_KEYS = frozenset({"json", "file", "line"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@functools.lru_cache(maxsize=None)
def _json_rows_builder_class():
  """Defined on first use: importing TFDS takes a second."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class JsonRowsBuilder(tfds.core.GeneratorBasedBuilder,
                        skip_registration=True):
    """Local JSONL/Parquet rows stored as ArrayRecord, one row per record.

    Rows are kept as their JSON text, undecoded: bad rows fail (or are
    skipped and counted) when read, with their original file and line,
    exactly as when reading the files directly.
    """

    VERSION = tfds.core.Version("1.0.0")
    # Local files have no download checksums to look up next to the code;
    # TFDS would otherwise resolve the code's package through
    # `importlib_resources`, which it does not declare as a dependency.
    code_path = None
    RELEASE_NOTES = {"1.0.0": "JSON rows with file and line."}

    def __init__(self, *, name: str, splits: Mapping[str, Sequence[str]],
                 fingerprint: Any, **kwargs):
      self.name = name
      self._splits = splits
      self._fingerprint = fingerprint
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description="Rows converted by rankjax.data.prepare_tfds.",
          features=tfds.features.FeaturesDict({
              "json": tfds.features.Text(),
              "file": tfds.features.Text(),
              "line": tfds.features.Scalar(dtype=np.int64),
          }),
          metadata=tfds.core.MetadataDict(sources=self._fingerprint),
          # Keep file order; pipelines shuffle by seed themselves.
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(files)
              for split, files in self._splits.items()}

    def _generate_examples(self, files):
      source = open_source(files)
      for i in range(len(source)):
        path, line = source.where(i)
        yield f"{i:012d}", {"json": source.raw(i), "file": path, "line": line}

  return JsonRowsBuilder


def _fingerprint(splits: Mapping[str, Sequence[str]]) -> dict:
  """What the conversion was made from: paths, sizes and mtimes."""
  return {split: [[f, os.path.getsize(f), os.stat(f).st_mtime_ns]
                  for f in files] for split, files in splits.items()}


def prepare_tfds(paths: Paths | Mapping[str, Paths], *, name: str,
                 data_dir: str | os.PathLike, overwrite: bool = False) -> str:
  """Converts JSONL/Parquet files to an ArrayRecord TFDS dataset, once.

  Args:
    paths: files or globs for a single "train" split, or {split: paths}.
    name: dataset name (lower_snake_case); load it with `load_tfds(name,
      data_dir=...)` or `tfds.data_source(name, data_dir=...)`.
    data_dir: TFDS data directory; the dataset lands in
      `data_dir/name/1.0.0`.
    overwrite: rebuild even if the dataset exists.

  Returns:
    The prepared dataset's directory.

  Raises:
    ValueError: the dataset exists but was made from other files (or other
      versions of them); pass `overwrite=True` to rebuild it.
  """
  if not _NAME.match(name):
    raise ValueError(f"dataset name must be lower_snake_case, got {name!r}")
  if not isinstance(paths, Mapping):
    paths = {"train": paths}
  splits = {split: expand_paths(p) for split, p in paths.items()}
  fingerprint = json.loads(json.dumps(_fingerprint(splits)))
  builder = _json_rows_builder_class()(
      name=name, splits=splits, fingerprint=fingerprint,
      data_dir=os.fspath(data_dir), file_format="array_record")
  if builder.is_prepared():
    if not overwrite and builder.info.metadata.get("sources") == fingerprint:
      return os.fspath(builder.data_dir)
    if not overwrite:
      raise ValueError(
          f"TFDS dataset {name!r} in {builder.data_dir} was prepared from "
          "other files (or older versions of them); pass overwrite=True to "
          "rebuild it, or choose another name")
    shutil.rmtree(os.fspath(builder.data_dir))
    builder = _json_rows_builder_class()(
        name=name, splits=splits, fingerprint=fingerprint,
        data_dir=os.fspath(data_dir), file_format="array_record")
  logging.info("rankjax.data: converting %s to ArrayRecord in %s", splits,
               builder.data_dir)
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def _plain_value(value: Any, location: str, field: str) -> Any:
  """TFDS numpy/bytes values -> plain Python (str for text)."""
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"invalid UTF-8 at byte {e.start}", location=location,
                      field=field, reason="unreadable") from e
  if isinstance(value, np.ndarray):
    return [_plain_value(v, location, field) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, Mapping):
    return {k: _plain_value(v, location, f"{field}.{k}" if field else k)
            for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain_value(v, location, field) for v in value]
  return value


class TfdsSource:
  """Rows of a TFDS data source (ArrayRecord, random access).

  Datasets made by `prepare_tfds` yield the original rows with their
  original file and line; any other dataset yields its features as plain
  Python values (text decoded as UTF-8), located as `tfds:name/split:n`.
  """

  def __init__(self, data_source, *, name: str, split: str):
    self._ds = data_source
    self.name = name
    self.split = split
    self._json_rows = None

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, i: int) -> Row:
    i = int(i)
    element = self._ds[i]
    if self._json_rows is None:
      self._json_rows = set(element) == _JSON_ROW_KEYS
    if self._json_rows:
      path = element["file"]
      if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
      line = int(element["line"])
      raw = element["json"]
      raw = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
      return Row(parse_json_line(raw, f"{path}:{line}"), path, line)
    where = f"tfds:{self.name}/{self.split}"
    return Row(_plain_value(dict(element), f"{where}:{i + 1}", ""), where,
               i + 1)

  def __repr__(self) -> str:
    return f"TfdsSource({self.name}/{self.split}, {len(self)} rows)"


def load_tfds(name: str, *, data_dir: str | os.PathLike | None = None,
              split: str = "train") -> TfdsSource:
  """A prepared TFDS dataset (ArrayRecord) as a random-access source.

  Works for datasets made by `prepare_tfds` and for any TFDS dataset already
  prepared in `data_dir` with `file_format="array_record"`. Nothing is
  downloaded or generated: a missing dataset is an error.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir)
                           if data_dir is not None else None)
  except Exception as e:  # pylint: disable=broad-except
    # Unregistered names that are not on disk fail deep inside TFDS.
    raise DataFileNotFoundError(
        f"no prepared TFDS dataset {name!r} in {data_dir}: {e}") from e
  if not builder.is_prepared():
    raise DataFileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; "
        "prepare it first (prepare_tfds for local files)")
  return TfdsSource(builder.as_data_source(split=split), name=name,
                    split=split)
