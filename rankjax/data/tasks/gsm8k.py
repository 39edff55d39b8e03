"""GSM8K-format grade-school math: a local JSONL reader and a numeric verifier.

Rows are `{"question": str, "answer": "<worked solution> #### 72"}` (the
public GSM8K layout). Nothing is downloaded: point `read_gsm8k` at a file.
Records are `{"prompt": question, "completion": the worked solution as given,
"answer": the number after the last "####" with commas and "$" removed}`.
"""

from __future__ import annotations

import decimal
import functools
import json
import os
import re
from typing import Any

from rankjax.data.tasks._task import NumericTask, check_split
from rankjax.errors import UserInputError

FINAL_MARKER = "####"

# A number: optional '-', digits with optional thousands commas, optional
# decimals. Never starting right after a digit or '.', so "10-5" ends in "5"
# (not "-5") and "1.5.3" yields no extra "3" out of a number's tail.
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


class GSM8KFormatError(UserInputError):
  """A malformed row; the message starts with `path:line:`."""


def _number_text(match: re.Match[str]) -> str:
  return match.group(0).replace(",", "")


def extract_gsm8k_answer(text: str) -> str | None:
  """The final number of a solution, commas removed ("1,234" -> "1234").

  With a "####" marker, the first number after the last marker (None if
  there is none: the model committed to a malformed final answer); without
  one, the last number anywhere in the text.
  """
  at = text.rfind(FINAL_MARKER)
  if at >= 0:
    match = _NUMBER.search(text, at + len(FINAL_MARKER))
    return _number_text(match) if match else None
  matches = list(_NUMBER.finditer(text))
  return _number_text(matches[-1]) if matches else None


def _to_decimal(value: Any) -> decimal.Decimal | None:
  """A finite Decimal from "1,234", "$72", "72.0", 72 ...; None otherwise.

  Decimal (not float) so "0.1"-style answers compare exactly.
  """
  text = str(value).strip().replace(",", "").replace("$", "")
  try:
    number = decimal.Decimal(text)
  except decimal.InvalidOperation:
    return None
  return number if number.is_finite() else None


def verify_numeric(completion: str, answer: Any) -> float:
  """1.0 iff the completion's final number equals the reference numerically
  (so "72", "72.0", "72.00" match "72"; commas and "$" are ignored)."""
  predicted = extract_gsm8k_answer(completion)
  reference = _to_decimal(answer)
  if predicted is None or reference is None:
    return 0.0
  value = _to_decimal(predicted)
  return float(value is not None and value == reference)


def _parse_row(line: str, where: str) -> dict[str, str]:
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise GSM8KFormatError(f"{where}: invalid JSON ({e.msg})") from e
  if not isinstance(row, dict):
    raise GSM8KFormatError(
        f"{where}: expected a JSON object, got {type(row).__name__}")
  for field in ("question", "answer"):
    if field not in row:
      raise GSM8KFormatError(f"{where}: missing field {field!r}")
    if not isinstance(row[field], str):
      raise GSM8KFormatError(
          f"{where}: field {field!r} must be a string, got "
          f"{type(row[field]).__name__}")
  solution = row["answer"]
  at = solution.rfind(FINAL_MARKER)
  if at < 0:
    raise GSM8KFormatError(
        f"{where}: field 'answer' has no {FINAL_MARKER!r} final-answer marker")
  final = solution[at + len(FINAL_MARKER):].strip()
  if _to_decimal(final) is None:
    raise GSM8KFormatError(
        f"{where}: text after {FINAL_MARKER!r} is not a number: {final!r}")
  return {"prompt": row["question"], "completion": solution,
          "answer": final.replace(",", "").replace("$", "")}


def read_gsm8k(path: str | os.PathLike[str]) -> list[dict[str, str]]:
  """Records from a GSM8K-format JSONL file (blank lines are skipped).

  Raises:
    GSM8KFormatError: naming the file and 1-based line of the first bad row.
  """
  if not os.path.isfile(path):
    raise GSM8KFormatError(f"{os.fspath(path)}: no such file")
  records = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if line.strip():
        records.append(_parse_row(line, f"{os.fspath(path)}:{line_number}"))
  return records


class GSM8K(NumericTask):
  """Grade-school math from local GSM8K-format files (`read_gsm8k`):
  the numeric verifier, "####" before the final answer. `chat`: render the
  questions as a user turn (instruct checkpoints)."""

  name = "gsm8k"
  format_marker = answer_marker = FINAL_MARKER

  def __init__(self, path: str, eval_path: str = "", *, num_train: int = 20000,
               num_eval: int = 200, chat: bool = False):
    self.paths = {"train": path, "eval": eval_path}
    self.sizes = {"train": num_train, "eval": num_eval}
    self.chat = chat

  @functools.cache
  def records(self, split: str) -> list[dict]:
    check_split(split)
    path = self.paths[split]
    return read_gsm8k(path)[:self.sizes[split]] if path else []

  def verify(self, text: str, record: dict) -> float:
    return verify_numeric(text, record["answer"])

  def extract_answer(self, text: str) -> Any:
    return extract_gsm8k_answer(text)




def make(cfg) -> GSM8K:
  """`data.source="gsm8k"`: `data.path` / `data.eval_path`; a checkpoint's
  tokenizer (instruct models) gets the questions as a user turn."""
  d = cfg.data
  if not d.path:
    raise UserInputError("config key 'data.path': data.source='gsm8k' needs a path")
  return GSM8K(d.path, d.eval_path, num_train=d.num_train, num_eval=d.num_eval,
               chat=bool(cfg.model.path or cfg.tokenizer.path))
