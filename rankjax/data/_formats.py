"""Record formats (TRL conventions) and their tokenization.

A raw row is a dict. Its keys decide the format:

  lm                   {text} or {messages}
  prompt_only          {prompt, ...}            extra columns pass through
  prompt_completion    {prompt, completion}
  preference           {[prompt,] chosen, rejected[, margin]}
  unpaired_preference  {prompt, completion, label}
  ranked               {prompt, completions, scores}   K >= 2 completions,
                                                       one score each (higher
                                                       = better; ties allowed)

Every text field is a string or a list of `{role, content}` messages; message
lists are rendered with the tokenizer's chat template, strings are encoded
as they are (the prompt with the tokenizer's BOS). Parsing turns a row into a
small typed record (or a `DataError` naming the field); `tokenize_*` turns a
record into numpy int32 arrays: `tokens` plus a `loss_mask` aligned with
them (1 where the token is a training target).

Two conventions every consumer relies on:
  * `loss_mask[0] == 0` for every example: the first token is never
    predicted. A train step shifts targets left by one, so in a packed row
    this keeps a segment's first token from being "predicted" by the
    previous segment.
  * Completions end in EOS: strings get `eos_id` appended unless they already
    end in one of `eos_ids`; rendered completions get it only when the chat
    template did not already emit one of `eos_ids` (Qwen's `<|im_end|>`
    does; the built-in char template does not), so the model learns to stop
    on a token the sampler stops on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rankjax.errors import UserInputError

# A text field: a plain string or a conversation.
Text = str | list[dict[str, Any]]

LM = "lm"
PROMPT_ONLY = "prompt_only"
PROMPT_COMPLETION = "prompt_completion"
PREFERENCE = "preference"
UNPAIRED_PREFERENCE = "unpaired_preference"
RANKED = "ranked"

# (format, the keys that identify it), in detection order: the most specific
# key sets first, because a preference row also has a `prompt`.
FORMATS: tuple[tuple[str, str], ...] = (
    (RANKED, "{prompt, completions, scores}"),
    (PREFERENCE, "{[prompt,] chosen, rejected[, margin]}"),
    (UNPAIRED_PREFERENCE, "{prompt, completion, label}"),
    (PROMPT_COMPLETION, "{prompt, completion}"),
    (LM, "{text} or {messages}"),
    (PROMPT_ONLY, "{prompt, ...}"),
)
FORMAT_NAMES = tuple(name for name, _ in FORMATS)


class DataError(UserInputError):
  """A row that cannot become a training example, or data that cannot be
  read at all (a missing or empty file).

  Attributes:
    message: what is wrong.
    location: "file:line" (or "source:index") of the row, when known.
    field: the offending field, when one is to blame.
    reason: a short stable code used to count skipped rows: "unreadable",
      "unknown_format", "missing_field", "wrong_type", "empty",
      "untokenizable", "too_long".
  """

  def __init__(self, message: str, *, location: str | None = None,
               field: str | None = None, reason: str = "invalid"):
    self.message = message
    self.location = location
    self.field = field
    self.reason = reason
    super().__init__(self._describe())

  def _describe(self) -> str:
    where = f"{self.location}: " if self.location else ""
    what = f"field {self.field!r}: " if self.field else ""
    return f"{where}{what}{self.message}"

  def with_location(self, location: str) -> "DataError":
    """The same error placed at a row (parsers don't know where they are)."""
    if self.location is not None:
      return self
    return DataError(self.message, location=location, field=self.field,
                     reason=self.reason)


# ---------------------------------------------------------------------------
# Typed records.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LMRecord:
  text: Text


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  prompt: Text
  # Every other column, untouched (answers for verifiers, metadata).
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PromptCompletionRecord:
  prompt: Text
  completion: Text


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
  prompt: Text
  chosen: Text
  rejected: Text
  margin: float | None = None


@dataclasses.dataclass(frozen=True)
class UnpairedRecord:
  prompt: Text
  completion: Text
  label: bool


@dataclasses.dataclass(frozen=True)
class RankedRecord:
  prompt: Text
  completions: tuple[Text, ...]
  scores: tuple[float, ...]


Record = (LMRecord | PromptRecord | PromptCompletionRecord | PreferenceRecord
          | UnpairedRecord | RankedRecord)


# ---------------------------------------------------------------------------
# Detection and parsing.
# ---------------------------------------------------------------------------


def detect_format(row: Mapping[str, Any]) -> str | None:
  """The format a row's keys identify, or None."""
  keys = set(row)
  if {"prompt", "completions"} <= keys:  # a missing `scores` is then named
    return RANKED
  if {"chosen", "rejected"} <= keys:
    return PREFERENCE
  if {"prompt", "completion", "label"} <= keys:
    return UNPAIRED_PREFERENCE
  if {"prompt", "completion"} <= keys:
    return PROMPT_COMPLETION
  if "text" in keys or "messages" in keys:
    return LM
  if "prompt" in keys:
    return PROMPT_ONLY
  return None


def unknown_format_error(row: Mapping[str, Any],
                         location: str | None = None) -> DataError:
  listing = "; ".join(f"{name} {keys}" for name, keys in FORMATS)
  return DataError(
      f"keys {sorted(row)} match no record format; expected one of: "
      f"{listing}", location=location, reason="unknown_format")


def _require(row: Mapping[str, Any], name: str) -> Any:
  if name not in row:
    raise DataError(f"missing (row has keys {sorted(row)})", field=name,
                    reason="missing_field")
  return row[name]


def _messages(value: Sequence[Any], name: str) -> list[dict[str, Any]]:
  out = []
  for i, m in enumerate(value):
    if not isinstance(m, Mapping):
      raise DataError(f"message {i} is a {type(m).__name__}, expected a dict "
                      "with 'role' and 'content'", field=name,
                      reason="wrong_type")
    for key in ("role", "content"):
      if not isinstance(m.get(key), str):
        got = "missing" if key not in m else type(m[key]).__name__
        raise DataError(f"message {i} needs a string {key!r} (got {got})",
                        field=name, reason="wrong_type")
    out.append(dict(m))
  return out


def _text(row: Mapping[str, Any], name: str, *, allow_empty: bool) -> Text:
  """A string or a message list; `allow_empty` only for prompts."""
  value = _require(row, name)
  if isinstance(value, str):
    if not allow_empty and not value.strip():
      raise DataError("empty (or whitespace-only) string", field=name,
                      reason="empty")
    return value
  if isinstance(value, (list, tuple, np.ndarray)):
    messages = _messages(list(value), name)
    if not messages:
      raise DataError("empty message list", field=name, reason="empty")
    if not allow_empty and not any(m["content"].strip() for m in messages):
      raise DataError("every message is empty", field=name, reason="empty")
    return messages
  raise DataError(
      f"expected a string or a list of {{role, content}} messages, got "
      f"{type(value).__name__}", field=name, reason="wrong_type")


def _same_kind(prompt: Text, other: Text, name: str) -> None:
  """Prompt and completion must both be strings or both conversations."""
  if isinstance(prompt, str) != isinstance(other, str):
    kinds = {True: "a string", False: "a message list"}
    raise DataError(
        f"is {kinds[isinstance(other, str)]} but 'prompt' is "
        f"{kinds[isinstance(prompt, str)]}; use the same kind for both",
        field=name, reason="wrong_type")


def extract_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
  """Splits an implicit-prompt preference pair into (prompt, chosen, rejected).

  Like TRL's `extract_prompt`: the prompt is the longest common prefix (of
  messages, or of characters for strings, leaving a separating space with
  the completions).
  """
  if isinstance(chosen, str) != isinstance(rejected, str):
    raise DataError("'chosen' and 'rejected' must both be strings or both "
                    "message lists", field="rejected", reason="wrong_type")
  n = 0
  for a, b in zip(chosen, rejected):
    if a != b:
      break
    n += 1
  if isinstance(chosen, str) and 0 < n < len(chosen) and chosen[n - 1] == " ":
    n -= 1
  if n == 0:
    raise DataError("no 'prompt' given and 'chosen'/'rejected' share no "
                    "prefix to use as one", field="prompt", reason="empty")
  if chosen[n:] == rejected[n:] or not chosen[n:] or not rejected[n:]:
    empty = "chosen" if not chosen[n:] else "rejected"
    raise DataError("nothing left after removing the shared prompt "
                    "(chosen and rejected are identical or one extends the "
                    "other)", field=empty, reason="empty")
  return chosen[:n], chosen[n:], rejected[n:]


def _parse_lm(row):
  if "messages" in row:
    value = row["messages"]
    if not isinstance(value, (list, tuple, np.ndarray)):
      raise DataError(f"expected a list of {{role, content}} messages, got "
                      f"{type(value).__name__}", field="messages",
                      reason="wrong_type")
    return LMRecord(_text(row, "messages", allow_empty=False))
  value = _require(row, "text")
  if not isinstance(value, str):
    raise DataError(f"expected a string, got {type(value).__name__}",
                    field="text", reason="wrong_type")
  return LMRecord(_text(row, "text", allow_empty=False))


def _parse_prompt_only(row):
  prompt = _text(row, "prompt", allow_empty=False)
  return PromptRecord(prompt, {k: v for k, v in row.items() if k != "prompt"})


def _parse_prompt_completion(row):
  prompt = _text(row, "prompt", allow_empty=True)
  completion = _text(row, "completion", allow_empty=False)
  _same_kind(prompt, completion, "completion")
  return PromptCompletionRecord(prompt, completion)


def _parse_preference(row):
  chosen = _text(row, "chosen", allow_empty=False)
  rejected = _text(row, "rejected", allow_empty=False)
  if "prompt" in row:
    prompt = _text(row, "prompt", allow_empty=True)
    _same_kind(prompt, chosen, "chosen")
    _same_kind(prompt, rejected, "rejected")
  else:
    prompt, chosen, rejected = extract_prompt(chosen, rejected)
  margin = row.get("margin")
  if margin is not None:
    margin = _number(margin, "margin")
  return PreferenceRecord(prompt, chosen, rejected, margin)


def _parse_unpaired(row):
  prompt = _text(row, "prompt", allow_empty=True)
  completion = _text(row, "completion", allow_empty=False)
  _same_kind(prompt, completion, "completion")
  label = _require(row, "label")
  if not isinstance(label, (bool, np.bool_)):
    raise DataError(f"expected a boolean (true/false), got "
                    f"{type(label).__name__}", field="label",
                    reason="wrong_type")
  return UnpairedRecord(prompt, completion, bool(label))


def _number(value, field: str) -> float:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.integer, np.floating)):
    raise DataError(f"expected a number, got {type(value).__name__}", field=field,
                    reason="wrong_type")
  try:
    number = float(value)
  except OverflowError:  # a JSON integer too large for a float
    number = float("inf")
  if not np.isfinite(number):
    raise DataError(f"must be finite, got {value}", field=field, reason="wrong_type")
  return number


def _parse_ranked(row):
  prompt = _text(row, "prompt", allow_empty=True)
  completions, scores = _require(row, "completions"), _require(row, "scores")
  for name, value in (("completions", completions), ("scores", scores)):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
      raise DataError(f"expected a list, got {type(value).__name__}", field=name,
                      reason="wrong_type")
  if len(completions) != len(scores):
    raise DataError(f"{len(scores)} scores for {len(completions)} completions", field="scores",
                    reason="wrong_type")
  if len(completions) < 2:
    raise DataError(f"a ranked list needs at least 2 completions, got {len(completions)}",
                    field="completions", reason="empty")
  texts = []
  for i, value in enumerate(completions):
    field = f"completions[{i}]"
    text = _text({field: value}, field, allow_empty=False)
    _same_kind(prompt, text, field)
    texts.append(text)
  numbers = tuple(_number(v, f"scores[{i}]") for i, v in enumerate(scores))
  return RankedRecord(prompt, tuple(texts), numbers)


_PARSERS = {
    RANKED: _parse_ranked,
    LM: _parse_lm,
    PROMPT_ONLY: _parse_prompt_only,
    PROMPT_COMPLETION: _parse_prompt_completion,
    PREFERENCE: _parse_preference,
    UNPAIRED_PREFERENCE: _parse_unpaired,
}


def check_format(fmt: str) -> str:
  if fmt not in _PARSERS:
    raise ValueError(f"unknown format {fmt!r}; one of {FORMAT_NAMES}")
  return fmt


# `format` shadows the builtin on purpose: it is the config's name for it.
def parse_record(row: Any, format: str | None = None,  # pylint: disable=redefined-builtin
                 *, location: str | None = None) -> Record:
  """A typed record from a raw row; `format=None` detects it from the keys.

  Raises:
    DataError: the row is not a dict, matches no format, lacks a field or
      has one of the wrong type or empty; the error names `location`.
  """
  if not isinstance(row, Mapping):
    raise DataError(f"a row must be a JSON object, got {type(row).__name__}",
                    location=location, reason="wrong_type")
  if format is None:
    format = detect_format(row)
    if format is None:
      raise unknown_format_error(row, location)
  try:
    return _PARSERS[check_format(format)](row)
  except DataError as e:
    raise e.with_location(location) if location else e


def unpair_preference(record: PreferenceRecord
                      ) -> tuple[UnpairedRecord, UnpairedRecord]:
  """A paired preference as two KTO rows: chosen (True), rejected (False)."""
  return (UnpairedRecord(record.prompt, record.chosen, True),
          UnpairedRecord(record.prompt, record.rejected, False))


def unpair_preference_rows(rows: Iterable[Mapping[str, Any]]
                           ) -> list[dict[str, Any]]:
  """Raw paired rows -> raw unpaired rows (TRL's `unpair_preference_dataset`).

  Implicit prompts are extracted first; other columns (but `margin`) are
  copied to both halves.
  """
  out = []
  for row in rows:
    rec = _parse_preference(row)
    rest = {k: v for k, v in row.items()
            if k not in ("prompt", "chosen", "rejected", "margin")}
    for half in unpair_preference(rec):
      out.append({**rest, "prompt": half.prompt, "completion": half.completion,
                  "label": half.label})
  return out


# ---------------------------------------------------------------------------
# Tokenization.
# ---------------------------------------------------------------------------


def _encode(tokenizer, text: str, field: str, add_bos: bool = False):
  try:
    return list(tokenizer.encode(text, add_bos=add_bos))
  except (ValueError, KeyError) as e:
    raise DataError(f"cannot be tokenized: {e}", field=field,
                    reason="untokenizable") from e


def _render(tokenizer, messages, field: str, **kwargs):
  """The chat template's ids (and assistant mask, if asked)."""
  try:
    return tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    # Templates reject conversations with jinja2.TemplateError, tokenizers
    # with ValueError; either way this row cannot be rendered.
    raise DataError(f"chat template failed: {type(e).__name__}: {e}",
                    field=field, reason="untokenizable") from e


def _as_example(tokens: Sequence[int], loss_mask: Sequence[int],
                prefix: str = "") -> dict[str, np.ndarray]:
  mask = np.asarray(loss_mask, np.int32)
  if mask.size:
    mask[0] = 0  # see the module docstring: never a target
  return {f"{prefix}tokens": np.asarray(tokens, np.int32),
          f"{prefix}loss_mask": mask}


def _with_eos(ids: list[int], tokenizer, *, rendered: bool) -> list[int]:
  eos = set(tokenizer.eos_ids)
  has_eos = any(i in eos for i in ids) if rendered else (ids and ids[-1] in eos)
  return ids if has_eos else ids + [tokenizer.eos_id]


def _check_no_loss_tokens(mask, field: str) -> None:
  if not any(mask[1:]):
    raise DataError("has no tokens to train on (no assistant message?)",
                    field=field, reason="empty")


def tokenize_lm(record: LMRecord, tokenizer, *,
                assistant_only_loss: bool = False) -> dict[str, np.ndarray]:
  """`tokens`, `loss_mask` for language modelling.

  Strings: BOS + text + EOS, loss on every token. Conversations: the
  rendered chat, loss on every token, or with `assistant_only_loss` on the
  tokens the template marks as assistant (`return_assistant_mask`).
  """
  if isinstance(record.text, str):
    ids = _with_eos(_encode(tokenizer, record.text, "text", add_bos=True),
                    tokenizer, rendered=False)
    return _as_example(ids, [1] * len(ids))
  ids, amask = _render(tokenizer, record.text, "messages",
                       return_assistant_mask=True)
  ids, amask = list(ids), list(amask)
  full = _with_eos(ids, tokenizer, rendered=True)
  if len(full) > len(ids):
    amask.append(int(record.text[-1]["role"] == "assistant"))
  mask = amask if assistant_only_loss else [1] * len(full)
  if assistant_only_loss:
    _check_no_loss_tokens(mask, "messages")
  return _as_example(full, mask)


def _prompt_completion_ids(prompt: Text, completion: Text, tokenizer,
                           field: str
                           ) -> tuple[list[int], list[int], list[int]]:
  """(prompt ids, completion ids, assistant mask over both)."""
  if isinstance(prompt, str):
    p = _encode(tokenizer, prompt, "prompt", add_bos=True)
    c = _with_eos(_encode(tokenizer, completion, field), tokenizer,
                  rendered=False)
    return p, c, [0] * len(p) + [1] * len(c)
  p = list(_render(tokenizer, prompt, "prompt", add_generation_prompt=True))
  full, amask = _render(tokenizer, prompt + completion, field,
                        return_assistant_mask=True)
  full, amask = list(full), list(amask)
  if full[:len(p)] != p:
    raise DataError(
        "the chat template does not render the prompt (with generation "
        "prompt) as a prefix of prompt + completion, so the completion "
        "tokens cannot be located", field=field, reason="untokenizable")
  c = _with_eos(full[len(p):], tokenizer, rendered=True)
  amask += [1] * (len(p) + len(c) - len(full))
  return p, c, amask


def tokenize_prompt_completion(
    record: PromptCompletionRecord | UnpairedRecord | PreferenceRecord,
    tokenizer, *, completion_only_loss: bool = True,
    assistant_only_loss: bool = False, field: str = "completion",
    prefix: str = "") -> dict[str, np.ndarray]:
  """`tokens`, `loss_mask` for prompt + completion (+ EOS).

  Args:
    record: any record with a `prompt` and a completion field.
    tokenizer: see `rankjax.tokenizer`.
    completion_only_loss: loss only on completion tokens (else on all but
      the first).
    assistant_only_loss: for conversations, additionally only where the chat
      template marks assistant tokens (strings are unaffected).
    field: the completion's field ("chosen"/"rejected" for preferences).
    prefix: prepended to the output keys ("chosen_" -> chosen_tokens).
  """
  completion = getattr(record, field)
  p, c, amask = _prompt_completion_ids(record.prompt, completion, tokenizer,
                                       field)
  ids = p + c
  mask = [0] * len(p) + [1] * len(c) if completion_only_loss else [1] * len(ids)
  if assistant_only_loss and not isinstance(record.prompt, str):
    mask = [m & a for m, a in zip(mask, amask)]
    _check_no_loss_tokens(mask, field)
  return _as_example(ids, mask, prefix)


def tokenize_preference(record: PreferenceRecord, tokenizer, *,
                        completion_only_loss: bool = True,
                        assistant_only_loss: bool = False
                        ) -> dict[str, np.ndarray]:
  """`chosen_tokens`, `chosen_loss_mask`, `rejected_*` (+ `margin`)."""
  out = {}
  for side in ("chosen", "rejected"):
    out.update(tokenize_prompt_completion(
        record, tokenizer, completion_only_loss=completion_only_loss,
        assistant_only_loss=assistant_only_loss, field=side,
        prefix=f"{side}_"))
  if record.margin is not None:
    out["margin"] = np.asarray(record.margin, np.float32)
  return out


def tokenize_unpaired(record: UnpairedRecord, tokenizer, *,
                      completion_only_loss: bool = True,
                      assistant_only_loss: bool = False
                      ) -> dict[str, np.ndarray]:
  """`tokens`, `loss_mask`, `label` (int32 0/1: 1 = desirable)."""
  out = tokenize_prompt_completion(
      record, tokenizer, completion_only_loss=completion_only_loss,
      assistant_only_loss=assistant_only_loss)
  out["label"] = np.asarray(int(record.label), np.int32)
  return out


def tokenize_ranked(record: RankedRecord, tokenizer, *, completion_only_loss: bool = True,
                    assistant_only_loss: bool = False) -> dict[str, Any]:
  """`candidates`: one {tokens, loss_mask} per completion (each prompt +
  completion + EOS, as `tokenize_prompt_completion`), and `scores` f32[K]."""
  candidates = []
  for i, completion in enumerate(record.completions):
    pc = PromptCompletionRecord(record.prompt, completion)
    try:
      candidates.append(tokenize_prompt_completion(
          pc, tokenizer, completion_only_loss=completion_only_loss,
          assistant_only_loss=assistant_only_loss))
    except DataError as e:
      field = f"completions[{i}]" if e.field == "completion" else e.field
      raise DataError(e.message, field=field, reason=e.reason) from e
  return {"candidates": candidates, "scores": np.asarray(record.scores, np.float32)}


def tokenize_prompt(record: PromptRecord, tokenizer) -> dict[str, Any]:
  """`prompt_tokens` (BOS + prompt, or the chat with generation prompt),
  plus every extra column unchanged (for rewards and verifiers)."""
  if isinstance(record.prompt, str):
    ids = _encode(tokenizer, record.prompt, "prompt", add_bos=True)
  else:
    ids = _render(tokenizer, record.prompt, "prompt",
                  add_generation_prompt=True)
  return {**record.extras, "prompt_tokens": np.asarray(ids, np.int32)}


def tokenize(record: Record, tokenizer, *, completion_only_loss: bool = True,
             assistant_only_loss: bool = False) -> dict[str, Any]:
  """Dispatches on the record's type to the matching `tokenize_*`."""
  if isinstance(record, LMRecord):
    return tokenize_lm(record, tokenizer,
                       assistant_only_loss=assistant_only_loss)
  if isinstance(record, PromptRecord):
    return tokenize_prompt(record, tokenizer)
  kwargs = dict(completion_only_loss=completion_only_loss,
                assistant_only_loss=assistant_only_loss)
  if isinstance(record, PromptCompletionRecord):
    return tokenize_prompt_completion(record, tokenizer, **kwargs)
  if isinstance(record, PreferenceRecord):
    return tokenize_preference(record, tokenizer, **kwargs)
  if isinstance(record, UnpairedRecord):
    return tokenize_unpaired(record, tokenizer, **kwargs)
  if isinstance(record, RankedRecord):
    return tokenize_ranked(record, tokenizer, **kwargs)
  raise TypeError(f"not a record: {type(record).__name__}")
