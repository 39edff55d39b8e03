"""Tokenizers: Hugging Face `tokenizer.json` + chat templates, and a built-in
character-level tokenizer for the built-in tasks (so the default run needs no
files).

Both implement the same small surface:

  vocab_size, pad_id, bos_id, eos_id, eos_ids
  encode(text, add_bos=False) -> list[int]
  decode(ids, skip_special_tokens=True) -> str
  apply_chat_template(messages, add_generation_prompt=False, tokenize=False,
                      return_assistant_mask=False, tools=None)

`HFTokenizer` reproduces what transformers' fast tokenizers produce for the
same directory (ids, decoded text, rendered chat templates, assistant masks)
without importing transformers: training data rendered here must match what
the model sees at inference time elsewhere, token for token. Nothing is ever
unpickled; only JSON and Jinja files are read. `HFTokenizer.from_gguf` builds
the same kind of tokenizer from a llama.cpp GGUF file's metadata (no
tokenizer.json needed).
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import functools
import json
import os
import re
import shutil
import string
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils
import numpy as np
import tokenizers

from rankjax.errors import UserInputError
from rankjax.gguf_file import open_gguf


class TokenizerError(UserInputError):
  """A tokenizer directory or file that cannot be loaded, or text the
  built-in tokenizer cannot encode; the message names the path."""


class TokenizerNotFoundError(TokenizerError, FileNotFoundError):
  """No tokenizer where one was expected (also a FileNotFoundError)."""

# ---------------------------------------------------------------------------
# Built-in character tokenizer.
# ---------------------------------------------------------------------------

_SPECIALS = ("<pad>", "<bos>", "<eos>")
# Printable ASCII (no tabs/CR) plus newline. Order is part of the contract:
# traceable verifiers in rankjax.data.tasks compute digit ids from it.
_CHARS = "\n" + "".join(c for c in string.printable if c not in "\t\r\x0b\x0c\n")


# An export of a model that uses the built-in character tokenizer holds this
# file instead of tokenizer.json.
_CHAR_MARKER = "rankjax_tokenizer.json"
# What HFTokenizer.save copies next to the weights.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "chat_template.jinja", "additional_chat_templates")


class CharTokenizer:
  """Character-level tokenizer over printable ASCII.

  ids: 0 <pad>, 1 <bos>, 2 <eos>, then one id per character of `_CHARS`.
  `char_id(c)` gives a character's id (used by in-graph verifiers).
  """

  pad_id = 0
  bos_id = 1
  eos_id = 2

  def __init__(self):
    self._id_of = {c: i + len(_SPECIALS) for i, c in enumerate(_CHARS)}
    self._char_of = {i: c for c, i in self._id_of.items()}
    self.vocab_size = len(_SPECIALS) + len(_CHARS)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return (self.eos_id,)

  def char_id(self, c: str) -> int:
    return self._id_of[c]

  def save(self, path: str | os.PathLike) -> None:
    """Marks directory `path` (a model export) as using this tokenizer, so
    `load_tokenizer(path)` gives it back."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, _CHAR_MARKER), "w") as f:
      json.dump({"tokenizer": "char", "vocab_size": self.vocab_size}, f)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = [self.bos_id] if add_bos else []
    for pos, c in enumerate(text):
      if c not in self._id_of:
        raise TokenizerError(
            f"CharTokenizer: character {c!r} at position {pos} is not in the "
            "built-in vocabulary (printable ASCII and newline)")
      ids.append(self._id_of[c])
    return ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i < len(_SPECIALS):
        if not skip_special_tokens:
          out.append(_SPECIALS[i])
        continue
      out.append(self._char_of.get(i, "\ufffd"))
    return "".join(out)

  def apply_chat_template(self, messages, add_generation_prompt: bool = False,
                          tokenize: bool = False,
                          return_assistant_mask: bool = False, tools=None):
    """A minimal template: `<role>: <content>\\n` per message.

    With `return_assistant_mask`, returns `(ids, mask)` where mask marks the
    assistant contents (and the newline that ends them). This template has no
    tool format: `tools` must be empty (tool calling needs a Hugging Face
    tokenizer whose chat template renders tools).
    """
    if tools:
      raise ValueError("apply_chat_template: the character tokenizer's template has no "
                       "tool format; tool schemas need a Hugging Face tokenizer whose chat "
                       "template renders tools")
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
      head = self.encode(f"{m['role']}: ")
      body = self.encode(f"{m['content']}\n")
      ids += head + body
      is_asst = int(m["role"] == "assistant")
      mask += [0] * len(head) + [is_asst] * len(body)
    if add_generation_prompt:
      head = self.encode("assistant: ")
      ids += head
      mask += [0] * len(head)
    if return_assistant_mask:
      return ids, mask
    if tokenize:
      return ids
    return self.decode(ids)


# ---------------------------------------------------------------------------
# Chat templates: a Jinja environment with transformers' semantics.
# ---------------------------------------------------------------------------

# Named special tokens that transformers hands to every chat template (only
# those the tokenizer config sets).
_NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token",
                 "pad_token", "cls_token", "mask_token")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Older Jinja releases have known sandbox escapes; Hub templates are untrusted.
_MIN_JINJA = (3, 1, 6)

# While a render is traced: (blocks rendered so far, generation spans found).
_TRACE = contextvars.ContextVar("rankjax_chat_trace", default=None)


class _GenerationExtension(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}`: marks assistant text.

  The body renders unchanged. During a traced render the body's character
  span in the output is recorded: `Template.generate` yields output
  incrementally, so when the block runs, the text rendered so far is exactly
  what precedes it (the same bookkeeping transformers does, so masks agree).
  """

  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    call = self.call_method("_record_span")
    return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

  def _record_span(self, caller) -> str:
    text = caller()
    trace = _TRACE.get()
    if trace is not None:
      blocks, spans = trace
      start = sum(len(b) for b in blocks)
      spans.append((start, start + len(text)))
    return text


def _raise_exception(message):
  """Templates call this to reject a conversation (e.g. bad role order)."""
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None,
            sort_keys=False):
  """Jinja's own `tojson` HTML-escapes `<>&'`; templates expect plain JSON."""
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                    separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
  return datetime.datetime.now().strftime(fmt)


class _TemplateDict:
  """`dict` for templates: calling it and `fromkeys` only, so a template
  cannot reach the builtin type's attributes through the global."""

  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
  """`namespace()` that refuses underscore names, which could otherwise be
  used to reach CPython internals from inside the sandbox."""

  def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
    # Jinja's own signature trick, so that `namespace(self=...)` works.
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _TemplateNamespace._check(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _TemplateNamespace._check(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(
          f"chat templates may not set underscore attributes ({name!r}) on a "
          "namespace")


@functools.lru_cache(maxsize=32)
def _compile_template(source: str) -> jinja2.Template:
  """Compiles a chat template in the environment transformers uses.

  trim_blocks/lstrip_blocks change whitespace, so any other settings would
  render different text (and different tokens) for the same conversation.
  """
  version = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
  if version < _MIN_JINJA:
    raise ImportError(
        f"chat templates need jinja2>={'.'.join(map(str, _MIN_JINJA))} (older "
        f"sandboxes have known escapes); found {jinja2.__version__}")
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[_GenerationExtension, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals.update(raise_exception=_raise_exception,
                     strftime_now=_strftime_now, dict=_TemplateDict(),
                     namespace=_TemplateNamespace)
  return env.from_string(source)


def _render_traced(template: jinja2.Template,
                   context: Mapping[str, Any]) -> tuple[str, list]:
  """Renders and returns `(text, generation spans as (start, end) chars)`."""
  blocks: list[str] = []
  spans: list[tuple[int, int]] = []
  token = _TRACE.set((blocks, spans))
  try:
    for block in template.generate(**context):
      blocks.append(block)
  finally:
    _TRACE.reset(token)
  return "".join(blocks), spans


def _mask_from_spans(offsets: Sequence[tuple[int, int]],
                     spans: Sequence[tuple[int, int]]) -> list[int]:
  """1 for each token whose character range overlaps a generation span.

  Overlap, not containment: a token that straddles a span edge (BPE merges
  across the boundary) still carries assistant text, and transformers marks
  it too. Spans and offsets are both sorted, so one pass suffices.
  """
  mask = [0] * len(offsets)
  k = 0
  for i, (start, end) in enumerate(offsets):
    while k < len(spans) and start >= spans[k][1]:
      k += 1
    if k == len(spans):
      break
    if end > spans[k][0]:
      mask[i] = 1
  return mask


def _plain(value: Any) -> Any:
  """Rebuilds template inputs from plain JSON-like types.

  Objects with methods the sandbox does not know to be dangerous (arrays,
  str/int subclasses) become plain values or an inert `<TypeName>` string;
  the copy also keeps the caller's messages untouched.
  """
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, np.generic):
    return _plain(value.item())
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)}
  return f"<{type(value).__name__}>"


_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _normalize_messages(messages: Sequence[Any]) -> list[dict]:
  """Validates messages and prepares them the way transformers does.

  Keys whose value is None are dropped (APIs return `content=None` next to
  tool calls; templates handle a missing key but render `None` literally),
  and reasoning given under any common name is exposed as both
  `reasoning_content` and `thinking`, the names templates read.
  """
  if not messages:
    raise ValueError("apply_chat_template: the conversation is empty")
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
      raise ValueError(
          f"apply_chat_template: message {i} must be a dict with 'role' and "
          f"'content' keys, got {m!r}")
    m = _plain({k: v for k, v in m.items() if v is not None})
    reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None),
                     None)
    if reasoning is not None:
      m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
    out.append(m)
  return out


# ---------------------------------------------------------------------------
# Hugging Face tokenizer directory.
# ---------------------------------------------------------------------------


def _read_json(path: str) -> dict:
  """The JSON object in `path` ({} when there is no such file)."""
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise TokenizerError(f"{path}: cannot be read as JSON ({e})") from e
  if not isinstance(value, dict):
    raise TokenizerError(f"{path}: expected a JSON object, got {type(value).__name__}")
  return value


def _read_text(path: str) -> str | None:
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return f.read()


def _token_content(value: Any) -> str | None:
  """Special tokens are stored as strings or serialized AddedToken dicts."""
  if isinstance(value, Mapping):
    return value.get("content")
  return value if isinstance(value, str) else None


def _int_list(value: Any) -> list[int]:
  if isinstance(value, int) and not isinstance(value, bool):
    return [value]
  if isinstance(value, (list, tuple)):
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
  return []


def _load_chat_templates(path: str, config: Mapping[str, Any]) -> dict:
  """Returns {name: template}; the model's own template is named "default".

  As in transformers, template files (`chat_template.jinja`,
  `additional_chat_templates/*.jinja`) take priority over the config, and a
  config may hold one template or a list of `{"name", "template"}`.
  """
  templates = {}
  default = _read_text(os.path.join(path, "chat_template.jinja"))
  if default is not None:
    templates["default"] = default
  extra_dir = os.path.join(path, "additional_chat_templates")
  if os.path.isdir(extra_dir):
    for name in sorted(os.listdir(extra_dir)):
      if name.endswith(".jinja"):
        templates[name[:-len(".jinja")]] = _read_text(
            os.path.join(extra_dir, name))
  if templates:
    return templates
  configured = config.get("chat_template")
  if isinstance(configured, str):
    return {"default": configured}
  if isinstance(configured, (list, tuple)):
    return {t["name"]: t["template"] for t in configured}
  return {}


class HFTokenizer:
  """A Hugging Face fast tokenizer (`tokenizer.json`) with its chat template.

  Build it with `HFTokenizer.from_dir(path)` (or `load_tokenizer(path)`).
  Outputs equal transformers' `AutoTokenizer` for the same directory.

  Attributes:
    vocab_size: number of ids, added tokens included (transformers' `len()`).
    bos_id: id of the config's `bos_token`, or None.
    eos_id: the primary EOS id (the tokenizer's `eos_token` when set).
    eos_ids: every id that ends a turn: the tokenizer's EOS plus the
      `eos_token_id`s of `generation_config.json` / `config.json` (Llama 3
      instruct stops on several).
    pad_id: id of `pad_token`, falling back to `eos_id`.
    chat_template: the default template (str) or None.
    chat_templates: every named template, e.g. {"default", "tool_use"}.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer,
               special_tokens: Mapping[str, str] | None = None,
               extra_eos_ids: Iterable[int] = (),
               chat_templates: Mapping[str, str] | None = None,
               clean_up_tokenization_spaces: bool = False):
    """Wraps a `tokenizers.Tokenizer`.

    Args:
      tokenizer: the backend; padding and truncation baked into
        tokenizer.json are switched off (transformers does the same unless
        asked), so `encode` never pads or cuts text.
      special_tokens: named tokens (`bos_token`, `eos_token`, `pad_token`,
        ...) as strings; they are also chat template variables.
      extra_eos_ids: further ids that end generation.
      chat_templates: {name: jinja source}; "default" is used unless `tools`
        are passed and a "tool_use" template exists.
      clean_up_tokenization_spaces: transformers' legacy decode clean-up
        (" ." -> "."), which it skips for BPE models; so do we.
    """
    self._tok = tokenizer
    self._tok.no_padding()
    self._tok.no_truncation()
    self._special = {k: v for k, v in (special_tokens or {}).items()
                     if k in _NAMED_TOKENS and v is not None}
    self.chat_templates = dict(chat_templates or {})
    self.chat_template = self.chat_templates.get("default")
    self._clean_up = (clean_up_tokenization_spaces and
                      type(tokenizer.model).__name__ != "BPE")
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    self.bos_id = self.token_id(self._special.get("bos_token"))
    eos = [self.token_id(self._special.get("eos_token"))] + list(extra_eos_ids)
    self.eos_ids = tuple(dict.fromkeys(i for i in eos if i is not None))
    if not self.eos_ids:
      raise TokenizerError(
          "HFTokenizer: no EOS token found (set eos_token in "
          "tokenizer_config.json or eos_token_id in generation_config.json)")
    self.eos_id = self.eos_ids[0]
    pad_id = self.token_id(self._special.get("pad_token"))
    self.pad_id = self.eos_id if pad_id is None else pad_id

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> "HFTokenizer":
    """Loads a tokenizer directory as saved by transformers.

    Reads `tokenizer.json` (required), and when present
    `tokenizer_config.json`, `special_tokens_map.json`,
    `generation_config.json`, `config.json`, `chat_template.jinja` and
    `additional_chat_templates/`. Slow-tokenizer files are not supported.
    """
    path = os.fspath(path)
    tok_file = os.path.join(path, "tokenizer.json")
    if not os.path.isdir(path):
      raise TokenizerNotFoundError(f"HFTokenizer: no such directory {path!r}")
    if not os.path.isfile(tok_file):
      raise TokenizerNotFoundError(
          f"HFTokenizer: no tokenizer.json in {path!r} (expected {tok_file}); "
          "only fast (tokenizers-library) tokenizers are supported")
    try:
      tok = tokenizers.Tokenizer.from_file(tok_file)
    except Exception as e:  # pylint: disable=broad-except
      # The tokenizers library raises a bare Exception for unreadable files.
      raise TokenizerError(f"{tok_file}: the tokenizers library cannot load it "
                           f"({type(e).__name__}: {e})") from e
    config = _read_json(os.path.join(path, "tokenizer_config.json"))
    if "added_tokens_decoder" not in config:
      # Legacy layout: transformers lets special_tokens_map.json override.
      config.update(_read_json(os.path.join(path, "special_tokens_map.json")))
    # transformers' own flag: encode special-token text as plain text.
    tok.encode_special_tokens = bool(config.get("split_special_tokens", False))
    special = {k: _token_content(config.get(k)) for k in _NAMED_TOKENS}
    extra_eos = []
    for name in ("generation_config.json", "config.json"):
      extra_eos += _int_list(
          _read_json(os.path.join(path, name)).get("eos_token_id"))
    try:
      out = cls(tok, special_tokens=special, extra_eos_ids=extra_eos,
                chat_templates=_load_chat_templates(path, config),
                clean_up_tokenization_spaces=bool(
                    config.get("clean_up_tokenization_spaces", False)))
    except TokenizerError as e:
      raise TokenizerError(f"{path}: {e}") from None
    out.source_dir = path
    return out

  @classmethod
  def from_gguf(cls, path: str | os.PathLike) -> "HFTokenizer":
    """Builds the tokenizer a llama.cpp GGUF file describes in its metadata.

    Byte-level BPE vocabularies (`tokenizer.ggml.model` "gpt2": Llama 3,
    Qwen, SmolLM) are supported, built as transformers' GGUF loader builds
    them (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), so ids and
    chat renderings equal its. The chat template, BOS/EOS/pad and
    end-of-turn ids come from the same metadata.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise TokenizerNotFoundError(f"HFTokenizer: no such GGUF file {path!r}")
    meta = _read_gguf_tokenizer_metadata(path)
    tok = _gguf_byte_level_bpe(meta, path)
    tokens = meta["tokenizer.ggml.tokens"]
    special = {}
    for name, key in _GGUF_SPECIAL_IDS.items():
      i = meta.get(f"tokenizer.ggml.{key}")
      if i is not None and 0 <= i < len(tokens):
        special[name] = tokens[i]
    # Named special tokens stay whole, like the ones the file marks control.
    tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True)
                            for t in special.values() if tok.token_to_id(t) is not None])
    flags = {k: bool(meta.get(f"tokenizer.ggml.{k}", False))
             for k in ("add_bos_token", "add_eos_token")}
    tok.post_processor = _gguf_post_processor(
        tok, special.get("bos_token") if flags["add_bos_token"] else None,
        special.get("eos_token") if flags["add_eos_token"] else None)
    # llama.cpp stops on end-of-turn/message tokens too (Llama 3's <|eot_id|>).
    extra_eos = [meta[f"tokenizer.ggml.{k}_token_id"] for k in ("eot", "eom")
                 if f"tokenizer.ggml.{k}_token_id" in meta]
    templates = {name[len("tokenizer.chat_template."):]: t for name, t in meta.items()
                 if name.startswith("tokenizer.chat_template.")}
    if "tokenizer.chat_template" in meta:
      templates["default"] = meta["tokenizer.chat_template"]
    try:
      out = cls(tok, special_tokens=special, extra_eos_ids=extra_eos, chat_templates=templates)
    except TokenizerError as e:
      raise TokenizerError(f"{path}: {e}") from None
    out.source_gguf = path
    out._gguf_flags = flags
    return out

  def _write_tokenizer_files(self, path: str) -> None:
    """Writes tokenizer.json, tokenizer_config.json and the chat templates
    of a tokenizer built in memory (from a GGUF file)."""
    os.makedirs(path, exist_ok=True)
    self._tok.save(os.path.join(path, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **self._special,
              **getattr(self, "_gguf_flags", {}), "clean_up_tokenization_spaces": False}
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
    for name, template in self.chat_templates.items():
      target = (os.path.join(path, "chat_template.jinja") if name == "default" else
                os.path.join(path, "additional_chat_templates", f"{name}.jinja"))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with open(target, "w", encoding="utf-8") as f:
        f.write(template)
    # Further EOS ids live in generation_config.json (read back by from_dir).
    gen = os.path.join(path, "generation_config.json")
    if len(self.eos_ids) > 1 and not os.path.exists(gen):
      with open(gen, "w", encoding="utf-8") as f:
        json.dump({"eos_token_id": list(self.eos_ids)}, f, indent=2)

  def save(self, path: str | os.PathLike) -> None:
    """Copies the tokenizer files it was loaded from into `path` (a model
    export), so the export loads on its own; one built from a GGUF file
    writes them."""
    if getattr(self, "source_gguf", None):
      self._write_tokenizer_files(os.fspath(path))
      return
    if not getattr(self, "source_dir", None):
      raise ValueError("HFTokenizer.save: this tokenizer was not loaded from a "
                       "directory (HFTokenizer.from_dir); there are no files to copy")
    os.makedirs(path, exist_ok=True)
    for name in _TOKENIZER_FILES:
      src = os.path.join(self.source_dir, name)
      if os.path.isdir(src):
        shutil.copytree(src, os.path.join(path, name), dirs_exist_ok=True)
      elif os.path.isfile(src):
        shutil.copy(src, os.path.join(path, name))
    # Extra EOS ids live in generation_config.json; the model's own export
    # writes one, which wins.
    src = os.path.join(self.source_dir, "generation_config.json")
    if os.path.isfile(src) and not os.path.exists(os.path.join(path, "generation_config.json")):
      shutil.copy(src, os.path.join(path, "generation_config.json"))

  def token_id(self, token: str | None) -> int | None:
    """The id of a token string (special or not), or None if absent."""
    return None if token is None else self._tok.token_to_id(token)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Token ids of `text`.

    `add_bos` is transformers' `add_special_tokens`: it switches the
    tokenizer.json post-processor on. That processor decides what is added:
    Llama 3 prepends `<|begin_of_text|>`; Qwen's adds nothing, so BOS is
    never added there; some models also append EOS. Equal to
    `AutoTokenizer(...)(text, add_special_tokens=add_bos)["input_ids"]`.
    """
    return self._tok.encode(text, add_special_tokens=add_bos).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    text = self._tok.decode([int(i) for i in ids],
                            skip_special_tokens=skip_special_tokens)
    return _clean_up_spaces(text) if self._clean_up else text

  def _template_for(self, tools) -> str:
    if tools is not None and "tool_use" in self.chat_templates:
      return self.chat_templates["tool_use"]
    if self.chat_template is None:
      names = sorted(self.chat_templates)
      raise ValueError(
          "HFTokenizer: no default chat template"
          + (f" (named templates: {names})" if names else
             " (no chat_template in tokenizer_config.json and no "
             "chat_template.jinja)"))
    return self.chat_template

  def render_chat(self, messages: Sequence[Mapping[str, Any]],
                  add_generation_prompt: bool = False, tools=None,
                  **template_kwargs) -> tuple[str, list[tuple[int, int]]]:
    """Renders the chat template: `(text, generation spans)`.

    Spans are `(start, end)` character ranges of `{% generation %}` blocks.
    Template variables: `messages`, `tools`, `documents`,
    `add_generation_prompt`, the named special tokens (`bos_token`, ...),
    and `template_kwargs` (which override special tokens of the same name).
    """
    if tools is not None and not all(isinstance(t, Mapping) for t in tools):
      raise ValueError("apply_chat_template: tools must be JSON schema dicts")
    template = _compile_template(self._template_for(tools))
    context = {**self._special, **_plain(template_kwargs)}
    context.update(messages=_normalize_messages(messages),
                   tools=_plain(tools),
                   documents=context.get("documents"),
                   add_generation_prompt=add_generation_prompt)
    return _render_traced(template, context)

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                          add_generation_prompt: bool = False,
                          tokenize: bool = False,
                          return_assistant_mask: bool = False,
                          tools=None, **template_kwargs):
    """Renders a conversation with the model's chat template.

    Returns the text; with `tokenize`, its ids; with `return_assistant_mask`,
    `(ids, mask)` where mask[i] = 1 iff token i overlaps a
    `{% generation %}` block (the assistant tokens a loss trains on). The
    rendered text is tokenized with special tokens off, because the
    template already writes BOS and friends itself (as transformers does).

    Raises:
      ValueError: a message is not a dict with 'role' and 'content', or a
        mask is requested from a template without generation blocks.
      jinja2.TemplateError: the template called `raise_exception`.
    """
    template = self._template_for(tools)
    if return_assistant_mask and not _GENERATION_TAG.search(template):
      raise ValueError(
          "apply_chat_template: this chat template does not mark assistant "
          "tokens (no {% generation %} ... {% endgeneration %} blocks), so "
          "no assistant mask can be derived; use a template that has them")
    text, spans = self.render_chat(messages, add_generation_prompt, tools,
                                   **template_kwargs)
    if not (tokenize or return_assistant_mask):
      return text
    enc = self._tok.encode(text, add_special_tokens=False)
    if return_assistant_mask:
      return enc.ids, _mask_from_spans(enc.offsets, spans)
    return enc.ids


# ---------------------------------------------------------------------------
# GGUF files (llama.cpp): the tokenizer from the metadata.
# ---------------------------------------------------------------------------

# llama.cpp token types (`tokenizer.ggml.token_type`).
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4
_GGUF_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                     "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}
# The split regex of the tokenizer.json a vocabulary was trained with, by
# `tokenizer.ggml.pre`; any other value gets GPT-2's (ByteLevel's own), as in
# transformers' GGUF loader.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GGUF_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
                "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
                "deepseek-r1-qwen": _QWEN2_SPLIT}


def _read_gguf_tokenizer_metadata(path: str) -> dict[str, Any]:
  """The `tokenizer.*` metadata of a GGUF file (arrays as lists); the file is
  parsed once for the model and the tokenizer (`gguf_file.open_gguf`)."""
  try:
    reader = open_gguf(path)
  except (ValueError, KeyError, IndexError) as e:
    raise TokenizerError(f"{path}: cannot be read as GGUF ({type(e).__name__}: {e})") from e
  return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
  """GPT-2's printable spelling of each byte (byte-level BPE vocabularies)."""
  printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
  spelling = {b: chr(b) for b in printable}
  others = (b for b in range(256) if b not in spelling)
  spelling.update({b: chr(256 + n) for n, b in enumerate(others)})
  return spelling


def _gguf_byte_level_bpe(meta: Mapping[str, Any], path: str) -> tokenizers.Tokenizer:
  """The byte-level BPE backend of a "gpt2" GGUF vocabulary."""
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise TokenizerError(
        f"{path}: tokenizer.ggml.model {kind!r} is not supported (only 'gpt2', byte-level "
        "BPE); pass a directory with tokenizer.json as --config.tokenizer.path")
  if "tokenizer.ggml.tokens" not in meta or "tokenizer.ggml.merges" not in meta:
    raise TokenizerError(f"{path}: no tokenizer.ggml.tokens / tokenizer.ggml.merges")
  tokens = meta["tokenizer.ggml.tokens"]
  spelling = _byte_alphabet()
  alphabet = set(spelling.values())
  # A token outside the byte alphabet is one llama.cpp wrote as plain text:
  # respell it byte by byte (transformers does the same).
  vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
           for i, t in enumerate(tokens)}
  merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(
      vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
      end_of_word_suffix="", fuse_unk=False))
  split = _GGUF_SPLITS.get(meta.get("tokenizer.ggml.pre"))
  if split is None:
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  else:
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = tokenizers.decoders.ByteLevel()
  types = meta.get("tokenizer.ggml.token_type") or ()
  # Control tokens (<|im_start|>) are special; user-defined ones (<think>)
  # are added but not special. Either way they are matched whole in text. A
  # "control" token outside the byte alphabet is a mislabel, and is skipped.
  tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True)
                          for t, k in zip(tokens, types)
                          if k == _GGUF_CONTROL and set(t) <= alphabet])
  tok.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False)
                  for t, k in zip(tokens, types) if k == _GGUF_USER_DEFINED and t in vocab])
  return tok


def _gguf_post_processor(tok: tokenizers.Tokenizer, bos: str | None, eos: str | None):
  """What `encode(add_bos=True)` adds: BOS/EOS where the file asks for them
  (`tokenizer.ggml.add_bos_token` / `add_eos_token`)."""
  head = f"{bos}:0 " if bos else ""
  single = f"{head}$A:0{f' {eos}:0' if eos else ''}"
  pair = f"{single}{f' {bos}:1' if bos else ''} $B:1{f' {eos}:1' if eos else ''}"
  special = [(t, tok.token_to_id(t)) for t in (bos, eos) if t]
  return tokenizers.processors.TemplateProcessing(single=single, pair=pair,
                                                  special_tokens=special)


def _clean_up_spaces(text: str) -> str:
  """transformers' `clean_up_tokenization` (WordPiece-era decode clean-up)."""
  for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","),
                   (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                   (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
    text = text.replace(old, new)
  return text


def load_tokenizer(path: str | os.PathLike) -> HFTokenizer | CharTokenizer:
  """Loads the tokenizer saved in directory `path`: a Hugging Face one, or
  the built-in character tokenizer where an export says so; or the one in
  the metadata of a `.gguf` file."""
  if os.fspath(path).lower().endswith(".gguf"):
    return HFTokenizer.from_gguf(path)
  marker = os.path.join(os.fspath(path), _CHAR_MARKER)
  if os.path.isfile(marker):
    spec = _read_json(marker)
    if spec.get("tokenizer") != "char":
      raise TokenizerError(f"{marker}: unknown tokenizer {spec.get('tokenizer')!r}; "
                           "expected 'char'")
    return CharTokenizer()
  return HFTokenizer.from_dir(path)
