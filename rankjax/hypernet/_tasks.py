"""The task family of the hypernetwork: built-in arithmetic variants, each
described in words.

A variant is an operation (add, sub, mul), an answer format and a digit
count, named `<op>_<format>_<digits>` ("sub_cot_2"):

  bare   the completion is the number itself ("46"), verified on its first line;
  cot    a few worked lines, then "answer: N" (verified after the last marker);
  digits 1: operands of one digit; 2: operands of one or two digits.

The prompt is the same for every format ("12+34="), so nothing but the
description says which format is wanted: a model trained on a mixture of
formats without the description cannot know, a hypernetwork that reads it
can. Descriptions are written from interchangeable phrases (an operation
phrase, a digit phrase, a format phrase); `descriptions(variant)` lists
every combination, `description(variant)` is the first (canonical) one.
Every description uses printable ASCII only (the built-in character
tokenizer's alphabet).
"""

from __future__ import annotations

import dataclasses
import itertools

from rankjax.data import tasks
from rankjax.errors import UserInputError

OPS = ("add", "sub", "mul")
FORMATS = ("bare", "cot")
DIGITS = (1, 2)

_OP_PHRASES = {
    "add": ("Add two numbers", "Compute the sum of two numbers",
            "Find the total of two numbers"),
    "sub": ("Subtract the second number from the first", "Compute the difference of two numbers",
            "Take the second number away from the first"),
    "mul": ("Multiply two numbers", "Compute the product of two numbers",
            "Find the result of multiplying two numbers"),
}
_DIGIT_PHRASES = {
    1: ("of one digit", "that each have a single digit"),
    2: ("of one or two digits", "with at most two digits each"),
}
_FORMAT_PHRASES = {
    "bare": ("Reply with the number only.", "Give just the result, without any working.",
             "Answer with the bare number and nothing else."),
    "cot": ("Show your working and end with 'answer: N'.",
            "Work it out step by step, then write 'answer: N' on the last line.",
            "Explain the steps and finish with a line 'answer: N'."),
}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One task of the family: `op` (add, sub, mul), `answer_format` (bare,
  cot) and `digits` (1: one-digit operands; 2: one or two digits)."""
  op: str
  answer_format: str
  digits: int

  @property
  def name(self) -> str:
    return f"{self.op}_{self.answer_format}_{self.digits}"

  @property
  def cot(self) -> bool:
    return self.answer_format == "cot"

  def spec(self, seed: int) -> tasks.ArithmeticTask:
    return tasks.ArithmeticTask(ops=(self.op,), min_digits=1, max_digits=self.digits,
                                cot=self.cot, seed=seed)


def parse_variant(name: str, key: str = "hypernet variant") -> Variant:
  """`"sub_cot_2"` -> Variant("sub", "cot", 2); UserInputError naming `key`
  for anything else."""
  parts = name.split("_")
  ok = (len(parts) == 3 and parts[0] in OPS and parts[1] in FORMATS
        and parts[2] in tuple(map(str, DIGITS)))
  if not ok:
    raise UserInputError(
        f"{key}: {name!r} is not a variant <op>_<format>_<digits> with op in {OPS}, "
        f"format in {FORMATS}, digits in {DIGITS} (e.g. 'sub_cot_2')")
  return Variant(parts[0], parts[1], int(parts[2]))


def all_variants() -> tuple[Variant, ...]:
  return tuple(Variant(o, f, d) for o in OPS for f in FORMATS for d in DIGITS)


def descriptions(variant: Variant) -> list[str]:
  """Every wording of the variant's description (the first is canonical)."""
  return [f"{o} {d}. {f}" for o, d, f in itertools.product(
      _OP_PHRASES[variant.op], _DIGIT_PHRASES[variant.digits],
      _FORMAT_PHRASES[variant.answer_format])]


def description(variant: Variant, wording: int = 0) -> str:
  """The variant's description in words (`wording` indexes `descriptions`)."""
  return descriptions(variant)[wording]


def make_task(variant: Variant, *, seed: int, num_train: int,
              num_eval: int) -> tasks.Arithmetic:
  """The built-in arithmetic task of one variant: its records, its verifier
  (the variant's answer format) and its answer extraction."""
  return tasks.Arithmetic(variant.spec(seed), num_train=num_train, num_eval=num_eval)


def sft_rows(task: tasks.Arithmetic) -> list[dict]:
  """The task's training demonstrations as prompt/completion rows."""
  return [{"prompt": r["prompt"], "completion": r["completion"]} for r in task.records("train")]
