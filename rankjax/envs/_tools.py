"""Tool calling through the model's chat template, as TRL's GRPO `tools=`.

The prompt lists the tools' JSON schemas (rendered by the chat template);
the model writes a call in its family's format; `ToolEnv` runs it and
answers with exactly the text a chat server would put after the model's
turn: the rest of the assistant message, the `tool` messages and the next
assistant header, all rendered by the same template. Any other text would
train the model on a conversation layout it never sees when deployed.

Formats (`FORMATS`): "qwen" (Hermes, Qwen2.5, Qwen3:
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`) and
"llama3" (Llama 3.1/3.2 JSON calls: `{"name": ..., "parameters": {...}}`,
optionally after `<|python_tag|>`, the turn ended by `<|eom_id|>`).
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from rankjax.envs._protocol import HostStep
from rankjax.errors import UserInputError


class ToolCall(NamedTuple):
  """A well-formed call: a tool name and its keyword arguments."""
  name: str
  arguments: dict


class BadToolCall(NamedTuple):
  """A call that cannot be read (malformed JSON, wrong shape); the env shows
  `reason` to the model instead of guessing what it meant."""
  text: str
  reason: str


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean",
               list: "array", dict: "object", type(None): "null"}
# Google-style docstrings, read as transformers' get_json_schema reads them.
_DESCRIPTION = re.compile(r"^(.*?)[\n\s]*(Args:|Returns:|Raises:|\Z)", re.S)
_ARGS = re.compile(r"\n\s*Args:\n(.*?)[\n\s]*(Returns:|Raises:|\Z)", re.S)
_ARG_LINE = re.compile(r"^(\s*)(\w+)(?:\s*\([^()\n]*\))?:\s*(.*)$")
_RETURNS = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(Raises:|\Z)", re.S)


def _type_schema(hint) -> dict:
  """The JSON schema of a type hint: the scalars, list[...], dict[str, ...]
  and `X | None` (which transformers marks `nullable`)."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint in _JSON_TYPES:
    return {"type": _JSON_TYPES[hint]}
  if origin is list:
    return {"type": "array", **({"items": _type_schema(args[0])} if args else {})}
  if origin is dict:
    return {"type": "object", **({"additionalProperties": _type_schema(args[1])} if args else {})}
  if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
    return {**_type_schema(next(a for a in args if a is not type(None))), "nullable": True}
  raise TypeError(f"type hint {hint!r} has no simple JSON schema; write the schema by hand")


def _arg_docs(doc: str) -> dict[str, str]:
  """{name: description} from the `Args:` block; a description's lines
  (indented deeper than its name) join with single spaces."""
  block = _ARGS.search(doc)
  out, name, indent = {}, None, None
  for line in (block[1].splitlines() if block else []):
    m = _ARG_LINE.match(line)
    if m and (indent is None or len(m[1]) <= indent):
      name, indent, out[m[2]] = m[2], len(m[1]), m[3].strip()
    elif name and line.strip():
      out[name] = f"{out[name]} {line.strip()}".strip()
  return out


def function_schema(fn: Callable) -> dict:
  """`{"type": "function", "function": {name, description, parameters}}`
  for `fn`, as `transformers.utils.get_json_schema` gives it. The model
  reads the names, types and descriptions, so every argument needs a type
  hint and an `Args:` line."""
  name, doc = fn.__name__, (inspect.getdoc(fn) or "").strip()
  if not doc:
    raise UserInputError(f"tool {name!r} has no docstring; the model reads it to use the tool")
  hints, docs = typing.get_type_hints(fn), _arg_docs(doc)
  properties, required = {}, []
  for arg, param in inspect.signature(fn).parameters.items():
    if arg not in hints or arg not in docs:
      missing = "a type hint" if arg not in hints else "an Args: line in its docstring"
      raise UserInputError(f"tool {name!r}: argument {arg!r} needs {missing}")
    properties[arg] = {**_type_schema(hints[arg]), "description": docs[arg]}
    if param.default is inspect.Parameter.empty:
      required.append(arg)
  out = {"name": name, "description": _DESCRIPTION.search(doc)[1].strip(),
         "parameters": {"type": "object", "properties": properties,
                        **({"required": required} if required else {})}}
  returns = _RETURNS.search(doc)
  try:  # as transformers: a return hint it cannot convert is left out (templates ignore it)
    out["return"] = {**_type_schema(hints["return"]),
                     **({"description": returns[1].strip()} if returns else {})}
  except (KeyError, TypeError):
    pass
  return {"type": "function", "function": out}


def _matches(value, schema: Mapping) -> bool:
  """Whether a JSON value fits a `function_schema` type (ints pass as
  numbers, bools never as numbers, as in JSON Schema)."""
  if value is None:
    return bool(schema.get("nullable"))
  kind = schema.get("type")
  if kind == "array":
    return isinstance(value, list) and all(_matches(v, schema.get("items", {})) for v in value)
  py = {"integer": int, "number": (int, float), "string": str, "boolean": bool, "object": dict}
  return kind not in py or (isinstance(value, py[kind])
                            and (kind == "boolean" or not isinstance(value, bool)))


def argument_errors(arguments: Mapping, schema: Mapping) -> list[str]:
  """What is wrong with a call's arguments for a tool's schema (empty: ok)."""
  params = schema["function"]["parameters"]
  props = params["properties"]
  out = [f"missing argument {a!r}" for a in params.get("required", []) if a not in arguments]
  out += [f"unexpected argument {a!r}" for a in arguments if a not in props]
  return out + [f"argument {a!r} must be {props[a]['type']}, got {json.dumps(v)}"
                for a, v in arguments.items() if a in props and not _matches(v, props[a])]


def _read_call(body: str, args_key: str) -> ToolCall | BadToolCall:
  """A call from its JSON text; `args_key` names the arguments in this
  format ("arguments" is accepted too)."""
  try:
    obj = json.loads(body)
  except json.JSONDecodeError as e:
    return BadToolCall(body, f"invalid JSON ({e.msg} at char {e.pos})")
  obj = obj if isinstance(obj, dict) else {}
  name, args = obj.get("name"), obj.get(args_key, obj.get("arguments"))
  if not isinstance(name, str) or not isinstance(args, dict):
    return BadToolCall(body, f'expected {{"name": <tool>, "{args_key}": {{...}}}}')
  return ToolCall(name, args)


def _parse_qwen(text: str) -> list[ToolCall | BadToolCall]:
  """Every `<tool_call>...</tool_call>` block; an unclosed last one is bad."""
  out = [_read_call(m[1].strip(), "arguments")
         for m in re.finditer(r"<tool_call>(.*?)</tool_call>", text, re.S)]
  tail = text.rpartition("</tool_call>")[2]
  if "<tool_call>" in tail:
    out.append(BadToolCall(tail[tail.find("<tool_call>"):], "no closing </tool_call>"))
  return out


def _parse_llama3(text: str) -> list[ToolCall | BadToolCall]:
  """One JSON object (Llama 3.1 templates take one call per turn), after
  `<|python_tag|>` if there is one; no `{` at all means no call."""
  body = text.strip().removesuffix("<|eom_id|>").removesuffix("<|eot_id|>")
  body = body.split("<|python_tag|>")[-1].strip()
  return [_read_call(body[body.find("{"):], "parameters")] if "{" in body else []


class Format(NamedTuple):
  """A model family's call syntax. `resume_after`: where the model's own
  text stops in the rendered assistant message (its turn is cut at
  `turn_end`, before the template's end-of-message text); None when the
  model's `turn_end` itself closes the message."""
  parse: Callable[[str], list]
  turn_end: str
  resume_after: str | None
  opener: str  # where a call starts: the message content is the text before
  example: str


FORMATS = {
    "qwen": Format(_parse_qwen, "</tool_call>", "</tool_call>", "<tool_call>",
                   '<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>'),
    "llama3": Format(_parse_llama3, "<|eom_id|>", None, "{",
                     '{"name": ..., "parameters": {...}}<|eom_id|>'),
}


def _format(fmt: str) -> Format:
  if fmt not in FORMATS:
    raise UserInputError(f"unknown tool-call format {fmt!r}; expected one of {sorted(FORMATS)}")
  return FORMATS[fmt]


def parse_tool_calls(text: str, fmt: str = "qwen") -> list[ToolCall | BadToolCall]:
  """The calls in a model turn, in order: `ToolCall`s, and `BadToolCall`s
  for those that cannot be read."""
  return _format(fmt).parse(text)


def tool_observation(tokenizer, messages_so_far: Sequence[Mapping],
                     tool_messages: Sequence[Mapping], tools: Sequence[Mapping] | None,
                     resume_after: str | None = None, **template_kwargs) -> str:
  """The text after the assistant turn that ends `messages_so_far`: the
  rendering with `tool_messages` and the generation prompt, less the
  rendering without them. With `resume_after`, the text after its last
  occurrence in the assistant message is kept too (Qwen's `<|im_end|>\\n`,
  which the model never wrote: its turn stopped at `</tool_call>`).

  Raises ValueError when the template renders the conversation
  differently once tool messages follow (no text would continue the
  model's turn), or does not render `resume_after` in the last message.
  """
  def render(msgs, gen):
    return tokenizer.apply_chat_template(list(msgs), add_generation_prompt=gen, tools=tools,
                                         **template_kwargs)
  prefix = render(messages_so_far, False)
  full = render([*messages_so_far, *tool_messages], True)
  if not full.startswith(prefix):
    raise ValueError("tool_observation: the chat template renders the conversation differently "
                     "once tool messages follow, so no text continues the model's turn: "
                     f"{prefix[-40:]!r} became {full[len(prefix) - 40:][:60]!r}")
  if resume_after is None:
    return full[len(prefix):]
  before = render(messages_so_far[:-1], False) if len(messages_so_far) > 1 else ""
  at = prefix.rfind(resume_after)
  if at < len(before) or not prefix.startswith(before):
    raise ValueError(f"tool_observation: the chat template does not render {resume_after!r} "
                     "in the last assistant message, so where the model's turn ends is unknown")
  return full[at + len(resume_after):]


class ToolState(NamedTuple):
  """One row's conversation: its messages (the model's turns as assistant
  messages), the text of a turn cut by `turn_max_tokens` (the next step
  reads it with its continuation), and the calls made so far."""
  messages: tuple
  pending: str = ""
  calls: int = 0


class ToolEnv:
  """A `HostEnvironment` that runs the Python functions the model calls.

  Every failed action (unknown tool, bad arguments, malformed JSON, a tool
  that raised, a turn that ended without a call, calls past `max_calls`)
  answers an `error: ...` tool message with `error=True`; the episode
  goes on, except past `max_calls` (done). Rewards are 0: the task's
  reward scores the final answer. `template_kwargs` go to every rendering
  (e.g. `date_string`) and should be the prompt's.
  """
  name = "tools"

  def __init__(self, tools: Sequence[Callable], tokenizer, fmt: str = "qwen", max_calls: int = 8,
               template_kwargs: Mapping[str, Any] | None = None):
    self.tokenizer, self.fmt, self.format = tokenizer, fmt, _format(fmt)
    self.turn_end = self.format.turn_end
    self.tools = {fn.__name__: fn for fn in tools}
    self.schemas = {n: function_schema(fn) for n, fn in self.tools.items()}
    self.max_calls, self.template_kwargs = max_calls, dict(template_kwargs or {})

  @property
  def tools_schema(self) -> list[dict]:
    """The `tools=` argument of the prompt's chat template."""
    return list(self.schemas.values())

  def reset(self, record: dict) -> ToolState:
    prompt = record["prompt"]
    if isinstance(prompt, str):
      return ToolState(({"role": "user", "content": prompt},))
    return ToolState(tuple(dict(m) for m in prompt))

  def _run(self, call: ToolCall) -> tuple[str, bool]:
    """(result text, failed) for one readable call."""
    if call.name not in self.tools:
      return f"error: unknown tool {call.name!r}; available: {', '.join(self.tools)}", True
    problems = argument_errors(call.arguments, self.schemas[call.name])
    if problems:
      return f"error: {call.name}: {'; '.join(problems)}", True
    try:
      result = self.tools[call.name](**call.arguments)
    except Exception as e:  # the model's action failed, not the run
      return f"error: {call.name} raised {type(e).__name__}: {e}", True
    # JSON rather than a Python repr: what models are trained to read.
    return result if isinstance(result, str) else json.dumps(result, default=str), False

  def _answer(self, text: str, made: int) -> tuple[dict, list, bool]:
    """(assistant message, [(tool name or None, content, failed)], over the
    call budget) for a finished turn."""
    calls = self.format.parse(text)
    bad = [c.reason for c in calls if isinstance(c, BadToolCall)]
    if not calls or bad:  # nothing a chat server could parse: the turn stays plain text
      reason = "malformed tool call: " + "; ".join(bad) if bad else "no tool call found"
      if self.format.resume_after is None:  # a stop token, not message text
        text = text.rstrip().removesuffix(self.turn_end)
      return ({"role": "assistant", "content": text},
              [(None, f"error: {reason}; write {self.format.example}", True)], False)
    content = text.split(self.format.opener)[0].strip().removesuffix("<|python_tag|>").strip()
    assistant = {"role": "assistant", "content": content, "tool_calls": [
        {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls]}
    if made + len(calls) > self.max_calls:  # refused before anything runs
      return assistant, [(None, f"error: tool call limit ({self.max_calls}) reached", True)], True
    return assistant, [(c.name, *self._run(c)) for c in calls], False

  def step(self, state: ToolState, turn_text: str) -> HostStep:
    text = state.pending + turn_text
    if not text.rstrip().endswith(self.turn_end):  # cut by turn_max_tokens: the turn goes on
      return HostStep(state._replace(pending=text), "")
    assistant, results, over = self._answer(text, state.calls)
    tool_messages = [{"role": "tool", "content": out, **({"name": n} if n else {})}
                     for n, out, _ in results]
    messages = (*state.messages, assistant)
    observation = tool_observation(self.tokenizer, messages, tool_messages, self.tools_schema,
                                   self.format.resume_after, **self.template_kwargs)
    made = state.calls + len(assistant.get("tool_calls", ()))
    return HostStep(ToolState((*messages, *tool_messages), "", made), observation, 0.0, over,
                    any(failed for *_, failed in results))
