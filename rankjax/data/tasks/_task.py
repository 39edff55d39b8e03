"""Tasks: everything a run knows about its problems, in one object.

A `Task` gives

  records(split)        its problems for "train" / "eval": dicts with TRL
                        columns: `prompt` (text, or chat messages),
                        `completion` where demonstrations exist, and any
                        reference columns (`answer`, ...)
  training_source(...)  the rows the offline stages (SFT/RM/DPO/KTO) read
  prompt_ids(record)    the ids the model sees for a record's prompt
  verify(text, record)  host verifier: 1.0 correct, 0.0 wrong, None when the
                        task has no verifier (`has_verifier`)
  extract_answer(text)  what a majority vote compares
  graph_verifier(tok)   an optional traceable verifier (in-graph reward)
  columns(records)      the reference columns reward functions receive
  format_marker         the text a well-formed completion contains ("format"
                        reward), or None

Built-ins are the modules of this package with `make(cfg) -> Task`
(`arithmetic`: generated in-process; `gsm8k`: a local GSM8K-format JSONL);
`data.source` names one. `FileTask` is a user's JSONL/Parquet (or TFDS)
with TRL columns. `from_config` picks the run's task; a Python task comes
from `task="path/to/file.py:make_task"` (`make_task()` returns a Task). This
module is the only place that reads `data.source`.
"""

from __future__ import annotations

import copy
import decimal
import functools
import importlib
import importlib.util
import json
import logging
import pkgutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rankjax.data import _sources
from rankjax.data._formats import DataError
from rankjax.errors import UserInputError

log = logging.getLogger("rankjax.tasks")

SPLITS = ("train", "eval")
# Columns that are the example itself, not references for rewards.
_EXAMPLE_COLUMNS = ("prompt", "completion", "chosen", "rejected", "label", "messages", "text")


def encode_prompt(tokenizer, prompt, *, chat: bool = False,
                  system: str | None = None, tools=None) -> list[int]:
  """Prompt ids: BOS + text (as `rankjax.data.tokenize_prompt` encodes a
  string prompt), or the chat template with the generation prompt for a
  message list, or for text with `chat` (one user turn). `tools`: JSON
  schemas the chat template renders (tool calling; implies the template)."""
  if isinstance(prompt, str) and not chat and tools is None:
    return list(tokenizer.encode(prompt, add_bos=True))
  messages = prompt if not isinstance(prompt, str) else [{"role": "user", "content": prompt}]
  if system:
    messages = [{"role": "system", "content": system}, *messages]
  return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                            tokenize=True, tools=tools))


class Task:
  """The interface with its defaults: a task without demonstrations,
  verifier or in-graph reward. Subclasses override what they know."""

  name = "task"
  # Render text prompts as one user turn of the tokenizer's chat template.
  chat = False
  format_marker: str | None = None

  def records(self, split: str) -> list[dict]:
    raise NotImplementedError

  def eval_records(self, n: int) -> list[dict]:
    """The first `n` held-out problems (the training ones when the task has
    no eval split, with a warning)."""
    records = self.records("eval")
    if not records:
      log.warning("%s: no eval split; evaluating on training problems", self.name)
      records = self.records("train")
    return records[:n]

  def training_source(self, split: str, *, paired: bool, seed: int, noise: float = 0.0,
                      list_size: int = 0):
    """Rows for the offline stages, or None when `split` has none. Default:
    the records as they are (their format must suit the stage). `paired`:
    the stage trains on preferences; `list_size` > 0: on ranked lists of
    that many completions (the listwise stage)."""
    records = self.records(split)
    return _sources.RecordSource(records, name=f"{self.name}:{split}") if records else None

  def prompt_ids(self, record: dict, tokenizer, tools=None) -> list[int]:
    """The record's prompt ids; with `tools` (JSON schemas), rendered by the
    chat template with them."""
    return encode_prompt(tokenizer, record["prompt"], chat=self.chat, tools=tools)

  @property
  def has_verifier(self) -> bool:
    return False

  def verify(self, text: str, record: dict) -> float | None:
    return None

  def extract_answer(self, text: str) -> Any:
    """The first non-empty line, stripped (None for an empty completion)."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return lines[0] if lines else None

  def graph_verifier(self, tokenizer) -> Callable | None:
    """`fn(completion_ids, completion_mask, answer_ids, answer_mask) ->
    f32[R]`, traceable, equal to `verify`; None: verify on the host."""
    return None

  def reference(self, prompt) -> dict | None:
    """Reference columns for a new prompt of this task, computed from the
    prompt itself (the built-in arithmetic task evaluates the expression);
    None when the prompt is not a problem of this task. Default `{}`: the
    task cannot check a new prompt, so synthesis verifies a proposed record
    against the reference columns the proposal wrote (`rankjax.synth`)."""
    return {}

  # The columns of a checkable solution that a synthesized record states
  # (`solution`, `complete`): by default the completion itself.
  solution_fields: tuple[str, ...] = ("completion",)

  def solution(self, record: dict) -> dict:
    """The solution columns of an existing record (how a seed shows its
    solution to the model that proposes new records)."""
    return {f: record[f] for f in self.solution_fields}

  def complete(self, proposal: dict) -> dict | None:
    """A proposed record (prompt + `solution_fields`) as a training record
    with its `completion`, or None when its solution cannot be carried out.
    Default: the proposal wrote the completion."""
    return dict(proposal)

  def render_record(self, record: dict, fields: Sequence[str]) -> str:
    """One record as a line of a synthesis proposal prompt: a JSON object
    of `fields`. A task may write its records more compactly (the line a
    model has to learn to continue is shorter)."""
    return json.dumps({f: record[f] for f in fields if f in record})

  def parse_record(self, line: str, fields: Sequence[str]) -> dict | None:
    """The record a proposal line wrote (`render_record` read back), or
    None unless every field is non-empty text."""
    try:
      record = json.loads(line.strip())
    except json.JSONDecodeError:
      return None
    if not isinstance(record, dict):
      return None
    if not all(isinstance(record.get(f), str) and record[f] for f in fields):
      return None
    return {f: record[f] for f in fields}

  def with_train_records(self, rows: list[dict]) -> "Task":
    """This task with `rows` as its training records (everything else,
    evaluation and verification included, unchanged): how synthesized data
    reaches the stages after `synthesize`."""
    task = copy.copy(self)
    own = self.records
    task.records = lambda split: list(rows) if split == "train" else own(split)
    return task

  def columns(self, records: Sequence[dict]) -> dict[str, list]:
    """Reference columns for reward functions: every column that is not the
    example itself, as full lists (rows without it get None)."""
    names = dict.fromkeys(k for r in records for k in r if k not in _EXAMPLE_COLUMNS)
    return {k: [r.get(k) for r in records] for k in names}


# -- built-in verifiable tasks --------------------------------------------------


def wrong_answer(answer: str, rng: np.random.Generator) -> str:
  """answer ± d, d in 1..9 (decimals keep their digits: "2.5" -> "7.5")."""
  delta = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1)
  return str(decimal.Decimal(answer) + delta)


def with_answer(completion: str, answer: str, marker: str | None) -> str:
  """The completion with its final answer replaced by `answer` (text before
  the last `marker` kept; no marker: the completion is the answer)."""
  if marker is None:
    return answer
  head = completion.rsplit(marker, 1)[0]
  return f"{head}{marker} {answer}"


def corrupt_completion(completion: str, answer: str, marker: str | None,
                       rng: np.random.Generator) -> str:
  """The completion with its final answer wrong (`wrong_answer`)."""
  return with_answer(completion, wrong_answer(answer, rng), marker)


def ranked_records(records: list[dict], *, size: int, seed: int,
                   marker: str | None) -> list[dict]:
  """Records with a numeric `answer` -> ranked lists {prompt, completions,
  scores} of `size` candidates: the demonstration (score 1) and size − 1
  copies with the final answer off by distinct offsets d ∈ ±1..9, scored
  1 − |d| / 10 (a near miss ranks above a far one; +d and −d tie). Seeded
  by (seed, row), like `preference_records`."""
  if not 2 <= size <= 19:
    raise ValueError(f"ranked lists of the built-in tasks hold 2..19 candidates, got {size}")
  offsets = np.asarray([d for d in range(-9, 10) if d])
  out = []
  for i, r in enumerate(records):
    picked = np.random.default_rng([seed, i, 1]).choice(offsets, size - 1, replace=False)
    completions = [r["completion"]] + [
        with_answer(r["completion"], str(decimal.Decimal(r["answer"]) + int(d)), marker)
        for d in picked]
    scores = [1.0] + [1.0 - abs(int(d)) / 10 for d in picked]
    out.append({"prompt": r["prompt"], "completions": completions, "scores": scores})
  return out


def preference_records(records: list[dict], *, seed: int, marker: str | None) -> list[dict]:
  """Records with a numeric `answer` -> {prompt, chosen, rejected}: chosen is
  the demonstration, rejected the same with its final answer replaced by
  answer ± d (d uniform in 1..9, seeded by (seed, row)), so a pair differs
  only where correctness is decided and every run builds the same pairs."""
  out = []
  for i, r in enumerate(records):
    rng = np.random.default_rng([seed, i])
    out.append({"prompt": r["prompt"], "chosen": r["completion"],
                "rejected": corrupt_completion(r["completion"], r["answer"], marker, rng)})
  return out


def noisy_demonstrations(rows: list[dict], records: list[dict], fraction: float, *,
                         seed: int, marker: str | None) -> list[dict]:
  """`rows` with a seeded `fraction` of completions given a wrong final
  answer (`corrupt_completion`): imperfect demonstrations. SFT then imitates
  both modes; verifier-based RL and reranking have to pick the right one."""
  rng = np.random.default_rng([seed, 7])
  noisy = rng.random(len(rows)) < fraction
  out = []
  for i, (row, rec) in enumerate(zip(rows, records)):
    if noisy[i]:
      wrong = corrupt_completion(rec["completion"], rec["answer"], marker,
                                 np.random.default_rng([seed, 7, i]))
      row = dict(row, completion=wrong)
    out.append(row)
  return out


class NumericTask(Task):
  """Problems with demonstrations and a numeric reference `answer`: the
  preference stages pair each demonstration with a wrong-answer copy, the
  listwise stage ranks it above several (`ranked_records`), and SFT may
  read a seeded share of them wrong (`noise`)."""

  # Where the final answer starts in a demonstration (None: it is all answer).
  answer_marker: str | None = None

  def training_source(self, split: str, *, paired: bool, seed: int, noise: float = 0.0,
                      list_size: int = 0):
    records = self.records(split)
    if not records:
      return None
    if list_size:
      rows = ranked_records(records, size=list_size, seed=seed, marker=self.answer_marker)
    elif paired:
      rows = preference_records(records, seed=seed, marker=self.answer_marker)
    else:
      rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in records]
      if noise and split == "train":
        rows = noisy_demonstrations(rows, records, noise, seed=seed, marker=self.answer_marker)
    return _sources.RecordSource(rows, name=f"{self.name}:{split}")

  @property
  def has_verifier(self) -> bool:
    return True


# -- a user's data --------------------------------------------------------------


class FileTask(Task):
  """A user's JSONL/Parquet files (paths or globs) with TRL columns, read as
  they are: prompt/completion rows train SFT, preference rows DPO/RM/KTO,
  prompts (+ reference columns) drive GRPO/PPO and evaluation.

  `verifier(text, record) -> float | None` and `extract(text)` are optional;
  without a verifier a run verifies with its first reward function (see
  `rankjax.rewards.from_names`). `tfds_name`: read a prepared TFDS dataset
  from `path` (its data_dir) instead.
  """

  name = "file"

  def __init__(self, path: str, eval_path: str = "", *, tfds_name: str = "",
               verifier: Callable[[str, dict], float | None] | None = None,
               extract: Callable[[str], Any] | None = None, chat: bool = False):
    self.paths = {"train": path, "eval": eval_path}
    self.tfds_name, self.chat = tfds_name, chat
    self._verifier, self._extract = verifier, extract

  def _source(self, split: str):
    if self.tfds_name:
      try:
        return _sources.load_tfds(self.tfds_name, data_dir=self.paths["train"] or None,
                                  split="train" if split == "train" else "test")
      except Exception:  # pylint: disable=broad-except
        if split == "train":
          raise
        return None
    path = self.paths[split]
    return _sources.open_source(path) if path else None

  def training_source(self, split: str, *, paired: bool, seed: int, noise: float = 0.0,
                      list_size: int = 0):
    return self._source(split)

  @functools.cache
  def records(self, split: str) -> list[dict]:
    check_split(split)
    source = self._source(split)
    if source is None:
      return []
    rows = []
    for i in range(len(source)):
      row = source[i]
      if not isinstance(row.record, dict) or "prompt" not in row.record:
        raise DataError(f"{row.location}: a task row needs a 'prompt' field; got "
                        f"{sorted(row.record) if isinstance(row.record, dict) else row.record!r}")
      rows.append(row.record)
    return rows

  @property
  def has_verifier(self) -> bool:
    return self._verifier is not None

  def verify(self, text: str, record: dict) -> float | None:
    return None if self._verifier is None else self._verifier(text, record)

  def extract_answer(self, text: str) -> Any:
    return self._extract(text) if self._extract else super().extract_answer(text)


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# -- from the config ------------------------------------------------------------


def load_callable(spec: str, what: str) -> Callable:
  """The function `name` of the Python file in `spec` = "path/to/file.py:name".

  Raises UserInputError naming the file and function when either is missing.
  """
  path, sep, name = spec.rpartition(":")
  if not sep or not path.endswith(".py") or not name.isidentifier():
    raise UserInputError(f"{what} {spec!r}: expected path/to/file.py:function")
  file = Path(path)
  if not file.is_file():
    raise UserInputError(f"{what} {spec!r}: no such file {path}")
  module_name = f"rankjax_user_{file.stem}_{abs(hash(str(file.resolve())))}"
  module = sys.modules.get(module_name)
  if module is None:
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    try:
      module_spec.loader.exec_module(module)
    except Exception as e:
      raise UserInputError(f"{what} {spec!r}: importing {path} raised "
                           f"{type(e).__name__}: {e}") from e
    sys.modules[module_name] = module
  fn = getattr(module, name, None)
  if not callable(fn):
    raise UserInputError(f"{what} {spec!r}: {path} defines no function {name!r}")
  return fn


# Sources read as files; every other `data.source` is a built-in task: a
# module of this package with `make(cfg) -> Task`.
FILE_SOURCES = ("jsonl", "parquet", "tfds")


def builtin_names() -> tuple[str, ...]:
  """The built-in tasks: this package's public modules that define `make`.
  Adding one is adding a module here (its test beside it)."""
  package = Path(__file__).parent
  names = []
  for info in pkgutil.iter_modules([str(package)]):
    if not info.name.startswith("_"):
      module = importlib.import_module(f"{__package__}.{info.name}")
      if callable(getattr(module, "make", None)):
        names.append(info.name)
  return tuple(sorted(names))


def source_names() -> tuple[str, ...]:
  """Every valid `data.source`."""
  return builtin_names() + FILE_SOURCES


def from_config(cfg) -> Task:
  """The run's task: `cfg.task` ("file.py:make_task"), a built-in named by
  `cfg.data.source`, or the user's files."""
  if cfg.task:
    task = load_callable(cfg.task, "task")()
    if not isinstance(task, Task):
      raise UserInputError(f"task {cfg.task!r} returned {type(task).__name__}, "
                           "not a rankjax Task")
    return task
  d = cfg.data
  if d.source in FILE_SOURCES:
    tfds_name = d.tfds_name if d.source == "tfds" else ""
    if not (d.path or tfds_name):
      raise UserInputError(f"config key 'data.path': data.source={d.source!r} needs a path")
    return FileTask(d.path, d.eval_path, tfds_name=tfds_name)
  if d.source not in builtin_names():
    raise UserInputError(f"config key 'data.source': unknown {d.source!r}; expected one of "
                         f"{', '.join(source_names())}")
  return importlib.import_module(f"{__package__}.{d.source}").make(cfg)
