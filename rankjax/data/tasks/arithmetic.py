"""Built-in arithmetic task: a seeded generator with disjoint splits, and two
verifiers (host Python over text, in-graph JAX over CharTokenizer ids) that
implement ONE correctness rule, so a reward computed inside a jitted GRPO step
equals the reward an evaluation script computes from decoded text.

Records are `{"prompt": "12+345=", "completion": ..., "answer": "357"}`.
Without chain of thought the completion is the answer itself (`"357"`); with
it, a few short reasoning lines and then a final line `"answer: 357"`.

Correctness rule (`verify` and `verify_tokens` both implement exactly this):

1. Completion text. Over token ids, the text stops at the first position whose
   mask is 0 or whose id is below the tokenizer's first character id (pad,
   bos, eos, or a negative id); `completion_text` is the host-side mirror. A
   string given to `verify` already is that text.
2. Answer line.
   * cot=False: the text up to the first newline, or all of it if none.
   * cot=True: find the LAST occurrence of `"answer:"`; none -> wrong. The
     answer line is what follows it up to the next newline (or the end), and
     must start with exactly one space, which is dropped.
   Anything after that newline is ignored; the newline itself is optional.
3. The answer line must equal `canonical_answer(reference)` character for
   character: base-10 digits, a leading '-' only for negatives, no leading
   zeros, no '+', no spaces. So "0357", "+357", "357 ", "-0" are all wrong.
   Because the reference is canonical, string equality is integer equality.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import operator
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.data.tasks._task import NumericTask, check_split

ANSWER_MARKER = "answer:"

_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
_APPLY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}
# Operand order does not change these results, so "3+5" and "5+3" are one
# problem for the train/test split (otherwise the test set leaks).
_COMMUTATIVE = frozenset({"add", "mul"})
_SPLITS = ("train", "test")
# int64 operands for numpy's generator.
_MAX_SUPPORTED_DIGITS = 18
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
  """Configuration of the arithmetic task.

  Attributes:
    ops: any of "add", "sub", "mul".
    min_digits, max_digits: digit count range of EACH operand (drawn
      independently and uniformly per operand; 1 digit includes 0).
    cot: completions carry short reasoning and end in "answer: N".
    seed: the generator seed; the train/test partition does not depend on
      it, so splits stay disjoint across seeds too.
    test_fraction: share of the problem space (not of samples) in test.
    tool_fraction: share of problems (by a hash, independent of the draws)
      whose cot completion uses the calculator tool instead of reasoning:
      "<calc>a op b</calc>" + its result line + "answer: N" (`rankjax.envs`).
  """
  ops: tuple[str, ...] = ("add", "sub", "mul")
  min_digits: int = 1
  max_digits: int = 3
  cot: bool = False
  seed: int = 0
  test_fraction: float = 0.2
  tool_fraction: float = 0.0

  def __post_init__(self):
    if not self.ops:
      raise ValueError("ArithmeticTask.ops is empty")
    unknown = [op for op in self.ops if op not in _SYMBOL]
    if unknown:
      raise ValueError(f"ArithmeticTask.ops: unknown {unknown}; "
                       f"choose from {sorted(_SYMBOL)}")
    if not 1 <= self.min_digits <= self.max_digits <= _MAX_SUPPORTED_DIGITS:
      raise ValueError(
          "ArithmeticTask needs 1 <= min_digits <= max_digits <= "
          f"{_MAX_SUPPORTED_DIGITS}, got {self.min_digits}, {self.max_digits}")
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"ArithmeticTask.test_fraction must be in (0, 1), got "
                       f"{self.test_fraction}")


# ---------------------------------------------------------------------------
# Generation.
# ---------------------------------------------------------------------------


def problem_split(op: str, a: int, b: int, test_fraction: float) -> str:
  """"train" or "test" for a problem, from a hash of its canonical form.

  A pure function of the problem (never of the seed or draw order), so one
  problem can never land in both splits, whatever seeds or sizes are used.
  """
  if op in _COMMUTATIVE:
    a, b = min(a, b), max(a, b)
  digest = hashlib.blake2b(f"{a}{_SYMBOL[op]}{b}".encode(), digest_size=8)
  u = int.from_bytes(digest.digest(), "big") / 2.0**64
  return "test" if u < test_fraction else "train"


def _reasoning_lines(op: str, a: int, b: int) -> list[str]:
  """Short worked steps; multiplication shows one partial product per
  non-zero digit of `b`, then their sum."""
  result = _APPLY[op](a, b)
  if op == "add":
    return [f"{a}+{b} = {result}"]
  if op == "sub":
    if a >= b:
      return [f"{a}-{b} = {result}"]
    return [f"{a}-{b} = -({b}-{a}) = {result}"]
  partials = []
  for place, digit in enumerate(reversed(str(b))):
    if digit != "0":
      factor = int(digit) * 10**place
      partials.append((factor, a * factor))
  if not partials:
    return [f"{a}*{b} = 0"]
  lines = [f"{a}*{factor} = {p}" for factor, p in partials]
  if len(partials) > 1:
    lines.append(" + ".join(str(p) for _, p in partials) + f" = {result}")
  return lines


def _uses_tool(op: str, a: int, b: int, fraction: float) -> bool:
  """Whether the demonstration of `a op b` calls the calculator: a hash of
  the problem (salted apart from `problem_split`), so draws do not move."""
  if fraction <= 0:
    return False
  digest = hashlib.blake2b(f"tool:{a}{_SYMBOL[op]}{b}".encode(), digest_size=8)
  return int.from_bytes(digest.digest(), "big") / 2.0**64 < fraction


def make_record(op: str, a: int, b: int, *, cot: bool,
                tool_fraction: float = 0.0) -> dict[str, str]:
  """The record for `a op b` (prompt "a<sym>b=")."""
  answer = str(_APPLY[op](a, b))
  if cot and _uses_tool(op, a, b, tool_fraction):
    # The calculator's observation ("<result>\n") is context the
    # environment writes; a demonstration shows the whole transcript.
    completion = f"<calc>{a}{_SYMBOL[op]}{b}</calc>{answer}\n{ANSWER_MARKER} {answer}"
  elif cot:
    completion = "\n".join(_reasoning_lines(op, a, b)
                           + [f"{ANSWER_MARKER} {answer}"])
  else:
    completion = answer
  return {"prompt": f"{a}{_SYMBOL[op]}{b}=", "completion": completion,
          "answer": answer}


def _draw_operand(rng: np.random.Generator, digits: int) -> int:
  low = 0 if digits == 1 else 10**(digits - 1)
  return int(rng.integers(low, 10**digits))


def generate(task: ArithmeticTask, split: str, n: int) -> list[dict[str, str]]:
  """`n` records of `split` ("train" or "test"), deterministic in task.seed.

  Problems are drawn with replacement (op, then each operand's digit count,
  then the operand) and kept when `problem_split` assigns them to `split`;
  small digit ranges therefore repeat problems rather than run out.
  """
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = np.random.default_rng([task.seed, _SPLITS.index(split)])
  records: list[dict[str, str]] = []
  max_draws = 1000 + 1000 * n
  for _ in range(max_draws):
    if len(records) == n:
      return records
    op = task.ops[int(rng.integers(len(task.ops)))]
    digits_a, digits_b = rng.integers(task.min_digits, task.max_digits + 1,
                                      size=2)
    a = _draw_operand(rng, int(digits_a))
    b = _draw_operand(rng, int(digits_b))
    if problem_split(op, a, b, task.test_fraction) == split:
      records.append(make_record(op, a, b, cot=task.cot, tool_fraction=task.tool_fraction))
  if len(records) == n:
    return records
  raise RuntimeError(
      f"generate: found only {len(records)}/{n} {split} problems in "
      f"{max_draws} draws; widen the digit range or change test_fraction")


# ---------------------------------------------------------------------------
# Host verifier.
# ---------------------------------------------------------------------------


def canonical_answer(answer: Any) -> str:
  """The reference as canonical decimal text ("-12", "0", "357")."""
  try:
    return str(int(answer))
  except (TypeError, ValueError) as e:
    raise ValueError(f"reference answer {answer!r} is not an integer") from e


def _answer_line(text: str, cot: bool) -> str | None:
  if cot:
    at = text.rfind(ANSWER_MARKER)
    if at < 0:
      return None
    line = text[at + len(ANSWER_MARKER):].split("\n", 1)[0]
    return line[1:] if line.startswith(" ") else None
  return text.split("\n", 1)[0]


def extract_answer(text: str, *, cot: bool = False) -> str | None:
  """The final answer of a completion under the module's rule, or None when
  the answer line is missing or not a canonical integer."""
  line = _answer_line(text, cot)
  if line is None or not _CANONICAL_INT.fullmatch(line):
    return None
  return line


def verify(completion_text: str, answer: Any, *, cot: bool = False) -> float:
  """1.0 iff the completion's final answer is exactly the reference."""
  return float(extract_answer(completion_text, cot=cot)
               == canonical_answer(answer))


def completion_text(ids: Sequence[int], mask: Sequence[Any], tok) -> str:
  """Host mirror of step 1 of the rule: decode up to the first masked-out or
  special (non-character) token. For sampler output (chars, eos, pads) this
  equals `tok.decode(ids)`."""
  first_char_id = _first_char_id(tok)
  kept = []
  for i, m in zip(ids, mask):
    if not m or int(i) < first_char_id:
      break
    kept.append(int(i))
  return tok.decode(kept)


# ---------------------------------------------------------------------------
# In-graph verifier over CharTokenizer ids.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VerifierTokenIds:
  """The few token ids `verify_tokens` needs; hashable, so it can be a static
  argument of jit. Build with `verifier_token_ids(tok)`."""
  first_char_id: int
  newline_id: int
  space_id: int
  marker_ids: tuple[int, ...]


def _first_char_id(tok) -> int:
  return max(tok.pad_id, tok.bos_id, tok.eos_id) + 1


def verifier_token_ids(tok) -> VerifierTokenIds:
  """Token ids for `verify_tokens` from a character tokenizer."""
  return VerifierTokenIds(
      first_char_id=_first_char_id(tok),
      newline_id=tok.char_id("\n"),
      space_id=tok.char_id(" "),
      marker_ids=tuple(tok.char_id(c) for c in ANSWER_MARKER))


def encode_answers(answers: Sequence[Any], tok,
                   max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Reference answers as `(answer_ids_ba int32[B, A], answer_mask_ba
  bool[B, A])`, A = max_len, canonical text left-aligned (mask is a prefix)."""
  answer_ids_ba = np.full((len(answers), max_len), tok.pad_id, np.int32)
  answer_mask_ba = np.zeros((len(answers), max_len), bool)
  for row, answer in enumerate(answers):
    text = canonical_answer(answer)
    if len(text) > max_len:
      raise ValueError(f"answer {text!r} (row {row}) is longer than "
                       f"max_len={max_len}")
    answer_ids_ba[row, :len(text)] = tok.encode(text)
    answer_mask_ba[row, :len(text)] = True
  return answer_ids_ba, answer_mask_ba


def _shifted(x_t: jax.Array, k: int, fill) -> jax.Array:
  """x_t[t + k], with `fill` past the end."""
  (length,) = x_t.shape
  padded = jnp.concatenate([x_t, jnp.full((k,), fill, x_t.dtype)])
  return padded[k:k + length]


def _cot_line_start(ids_t: jax.Array, in_text_t: jax.Array,
                    token_ids: VerifierTokenIds) -> tuple[jax.Array, jax.Array]:
  """(found, start) of the answer line after the LAST marker + one space."""
  (length,) = ids_t.shape
  pos_t = jnp.arange(length)
  match_t = jnp.ones((length,), bool)
  for k, marker_id in enumerate(token_ids.marker_ids):
    match_t &= (_shifted(ids_t, k, -1) == marker_id) & _shifted(
        in_text_t, k, False)
  last = jnp.max(jnp.where(match_t, pos_t, -1), initial=-1)
  space_at = last + len(token_ids.marker_ids)
  has_space = (jnp.take(in_text_t, space_at, mode="fill", fill_value=False)
               & (jnp.take(ids_t, space_at, mode="fill", fill_value=-1)
                  == token_ids.space_id))
  return (last >= 0) & has_space, space_at + 1


def _verify_one(ids_t: jax.Array, mask_t: jax.Array, answer_ids_a: jax.Array,
                answer_mask_a: jax.Array, *, cot: bool,
                token_ids: VerifierTokenIds) -> jax.Array:
  if ids_t.shape[0] == 0:  # gathers need a non-empty axis; a masked-out slot
    ids_t = jnp.zeros((1,), ids_t.dtype)  # keeps the text empty
    mask_t = jnp.zeros((1,), bool)
  (length,) = ids_t.shape
  pos_t = jnp.arange(length)
  is_char_t = mask_t.astype(bool) & (ids_t >= token_ids.first_char_id)
  # Step 1: the text is the run of characters before the first non-character.
  text_len = jnp.sum(jnp.cumprod(is_char_t.astype(jnp.int32)))
  in_text_t = pos_t < text_len
  if cot:
    found, start = _cot_line_start(ids_t, in_text_t, token_ids)
  else:
    found, start = jnp.array(True), jnp.array(0)
  newline_t = in_text_t & (ids_t == token_ids.newline_id) & (pos_t >= start)
  end = jnp.min(jnp.where(newline_t, pos_t, text_len), initial=text_len)
  # Step 3: the line [start, end) equals the reference exactly.
  answer_len = jnp.sum(answer_mask_a.astype(jnp.int32))
  (max_answer_len,) = answer_ids_a.shape
  offsets_a = jnp.arange(max_answer_len)
  got_a = jnp.take(ids_t, start + offsets_a, mode="fill", fill_value=-1)
  chars_equal = jnp.all((got_a == answer_ids_a) | (offsets_a >= answer_len))
  return (found & (end - start == answer_len) & chars_equal).astype(jnp.float32)


def verify_tokens(completion_ids_bt: jax.Array, completion_mask_bt: jax.Array,
                  answer_ids_ba: jax.Array, answer_mask_ba: jax.Array, *,
                  cot: bool, token_ids: VerifierTokenIds) -> jax.Array:
  """float32[B] rewards: the module's rule over CharTokenizer ids, in-graph.

  Pure jnp with static `cot` and `token_ids` (jit them as static arguments),
  so it runs inside a jitted sampling/training step and under vmap. Agrees
  exactly with `verify(completion_text(ids, mask, tok), answer, cot=cot)`.
  The answer arrays come from `encode_answers` (answer mask a prefix).
  """
  one = functools.partial(_verify_one, cot=cot, token_ids=token_ids)
  return jax.vmap(one)(completion_ids_bt, completion_mask_bt, answer_ids_ba,
                       answer_mask_ba)


_PROBLEM = re.compile(r"(0|[1-9][0-9]{0,17})([-+*])(0|[1-9][0-9]{0,17})=")


def reference_answer(prompt) -> dict | None:
  """{"answer": canonical result} for a prompt "a<op>b=" with canonical
  non-negative operands of at most 18 digits; None for anything else."""
  m = _PROBLEM.fullmatch(prompt) if isinstance(prompt, str) else None
  if m is None:
    return None
  op = {v: k for k, v in _SYMBOL.items()}[m.group(2)]
  return {"answer": str(_APPLY[op](int(m.group(1)), int(m.group(3))))}


# ---------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------


class Arithmetic(NumericTask):
  """The built-in arithmetic task as a `Task` (`ArithmeticTask` configures
  the generator; its "test" split is this task's "eval")."""

  name = "arithmetic"
  format_marker = ANSWER_MARKER

  def __init__(self, spec: ArithmeticTask | None = None, *,
               num_train: int = 20000, num_eval: int = 200):
    spec = spec or ArithmeticTask()
    self.spec, self.sizes = spec, {"train": num_train, "eval": num_eval}
    self.answer_marker = ANSWER_MARKER if spec.cot else None

  @functools.cache
  def records(self, split: str) -> list[dict]:
    check_split(split)
    return generate(self.spec, "train" if split == "train" else "test",
                               self.sizes[split])

  def verify(self, text: str, record: dict) -> float:
    return verify(text, record["answer"], cot=self.spec.cot)

  def extract_answer(self, text: str) -> Any:
    return extract_answer(text, cot=self.spec.cot)

  # A synthesized problem states the expression that solves it; the
  # completion is that expression carried out (`complete`).
  solution_fields = ("expression",)

  def reference(self, prompt) -> dict | None:
    """{"answer": ...} of a prompt "a<op>b=" (the expression evaluated
    exactly; any of +, -, *), or None when the prompt is not one."""
    return reference_answer(prompt)

  def render_record(self, record: dict, fields) -> str:
    """Fields joined by one space ("12+34= 12+34"): prompts and expressions
    hold no spaces, and a short line is quick for a small model to learn."""
    return " ".join(record[f] for f in fields)

  def parse_record(self, line: str, fields) -> dict | None:
    """`render_record` read back; "12+34=12+34" (the space after "=" left
    out, as small models often write it) reads as "12+34= 12+34"."""
    line = line.strip()
    if " " not in line and "=" in line[:-1]:
      line = line.replace("=", "= ", 1)
    parts = line.split(" ")
    if len(parts) != len(fields) or not all(parts):
      return None
    return dict(zip(fields, parts))

  def solution(self, record: dict) -> dict:
    return {"expression": record["prompt"].removesuffix("=")}

  def complete(self, proposal: dict) -> dict | None:
    """The proposal's `expression` ("a<op>b") evaluated into this task's
    completion (reasoning lines with cot); None when it is not one. The
    verifier then checks it against the prompt's own reference, so a
    record is kept only when its expression solves its problem."""
    m = _PROBLEM.fullmatch(proposal.get("expression", "") + "=")
    if m is None:
      return None
    op = {v: k for k, v in _SYMBOL.items()}[m.group(2)]
    done = make_record(op, int(m.group(1)), int(m.group(3)), cot=self.spec.cot)
    return {**proposal, "completion": done["completion"]}

  def graph_verifier(self, tokenizer) -> Callable | None:
    if not hasattr(tokenizer, "char_id"):  # the in-graph rule reads character ids
      return None
    ids, cot = verifier_token_ids(tokenizer), self.spec.cot
    return functools.partial(verify_tokens, cot=cot, token_ids=ids)




def make(cfg) -> Arithmetic:
  """`data.source="arithmetic"`: the task `cfg.data` describes."""
  d = cfg.data
  spec = ArithmeticTask(ops=d.ops, min_digits=d.min_digits, max_digits=d.max_digits,
                        cot=d.cot, seed=cfg.seed, tool_fraction=d.tool_fraction)
  return Arithmetic(spec, num_train=d.num_train, num_eval=d.num_eval)
