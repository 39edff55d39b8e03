"""Tool calling: schemas equal transformers' get_json_schema, calls parse in
both formats, every failed action is an error observation, and a whole
episode's transcript (prompt + turns + observations) is exactly what
transformers renders for the same conversation.
"""

import json

import pytest
from rankjax.envs._tools import (BadToolCall, ToolCall, ToolEnv, function_schema,
                                 parse_tool_calls, tool_observation)
from rankjax.tokenizer import HFTokenizer
from test_tokenizer import CHATML, _save, _train_bpe

transformers = pytest.importorskip("transformers")

# Qwen2.5-style tool template: tools in the system prompt, calls as
# <tool_call> blocks, consecutive tool results in one user turn.
QWEN_TOOLS = r"""
{%- if tools %}
{{- '<|im_start|>system\n' + (messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.') + '\n\n# Tools\n\n<tools>' }}
{%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\n</tools>\n\nCall a tool as <tool_call>\n{"name": <name>, "arguments": <args>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\n<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

# Llama-3.1-style JSON tool calling: tools in the first user message, one
# call per assistant message, results from the `ipython` role.
LLAMA_TOOLS = r"""{{- bos_token }}
{%- if messages[0].role == 'system' %}{%- set system_message = messages[0].content|trim %}{%- set messages = messages[1:] %}
{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}{{- "Environment: ipython\n" }}{%- endif %}
{{- "Today Date: " + date_string + "\n\n" + system_message + "<|eot_id|>" }}
{%- if tools is not none %}
{%- set first_user_message = messages[0].content|trim %}{%- set messages = messages[1:] %}
{{- '<|start_header_id|>user<|end_header_id|>\n\nRespond with {"name": function name, "parameters": arguments}.\n\n' }}
{%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\n\n" }}{%- endfor %}
{{- first_user_message + "<|eot_id|>" }}
{%- endif %}
{%- for message in messages %}
{%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content|trim + '<|eot_id|>' }}
{%- elif 'tool_calls' in message %}
{%- if not message.tool_calls|length == 1 %}{{- raise_exception("only single tool calls") }}{%- endif %}
{%- set tool_call = message.tool_calls[0].function %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + tool_call.name + '", "parameters": ' }}
{{- tool_call.arguments | tojson }}{{- "}<|eot_id|>" }}
{%- else %}
{{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
{%- if message.content is mapping or message.content is iterable %}{{- message.content | tojson }}
{%- else %}{{- message.content }}{%- endif %}
{{- "<|eot_id|>" }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"""

DATE = {"date_string": "26 Jul 2024"}


def add(a: int, b: int) -> int:
  """Adds two integers.

  Args:
    a: The first number.
    b: The second number.

  Returns:
    The sum of a and b.
  """
  return a + b


def div(x: float, y: float = 1.0) -> float:
  """Divides one number by another.

  Args:
    x: The dividend.
    y (float): The divisor, which must not
      be zero.
  """
  return x / y


def join(words: list[str], upper: bool, sep: str | None = None, scores: dict[str, int] = {}):
  """Joins words into one string.

  Args:
    words: The words.
    upper: Whether to upper-case them.
    sep: The separator (a space if None).
    scores: Unused weights.
  """
  text = (sep or " ").join(words)
  return text.upper() if upper else text


def log(event: str, level: int = 0) -> None:
  """Records an event.

  Args:
    event: What happened.
    level: How loud.

  Returns:
    Nothing at all,
      ever.
  """


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
  """{name: (rankjax HFTokenizer, transformers tokenizer)} on one tiny BPE."""
  root = tmp_path_factory.mktemp("tools")
  bpe = _train_bpe()
  qwen = _save(root / "qwen", bpe, {"eos_token": "<|im_end|>", "chat_template": QWEN_TOOLS})
  llama = _save(root / "llama", bpe, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                      "chat_template": LLAMA_TOOLS})
  both = lambda p: (HFTokenizer.from_dir(p), transformers.AutoTokenizer.from_pretrained(str(p)))
  return {"qwen": both(qwen), "llama3": both(llama), "backend": bpe}


@pytest.mark.parametrize("fn", [add, div, join, log])
def test_function_schema_matches_transformers(fn):
  from transformers.utils import get_json_schema
  assert function_schema(fn) == get_json_schema(fn)


def test_function_schema_needs_hints_and_docs():
  def nodoc(a: int):
    return a

  def nohint(a):
    """Doc.

    Args:
      a: A.
    """
  with pytest.raises(ValueError, match="'nodoc' has no docstring"):
    function_schema(nodoc)
  with pytest.raises(ValueError, match="'nohint': argument 'a' needs a type hint"):
    function_schema(nohint)


def test_parse_qwen_calls():
  text = ('Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
          '<tool_call>\n{"name": "div", "arguments": {"x": 4}}\n</tool_call>')
  assert parse_tool_calls(text, "qwen") == [ToolCall("add", {"a": 1, "b": 2}),
                                            ToolCall("div", {"x": 4})]
  assert parse_tool_calls("no calls here", "qwen") == []
  bad, shape, unclosed = parse_tool_calls(
      '<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>'
      '<tool_call>{"name": "add"}</tool_call><tool_call>{"name": "a', "qwen")
  assert isinstance(bad, BadToolCall) and bad.reason.startswith("invalid JSON")
  assert shape == BadToolCall('{"name": "add"}', 'expected {"name": <tool>, "arguments": {...}}')
  assert unclosed.reason == "no closing </tool_call>"


def test_parse_llama3_calls():
  call = ToolCall("add", {"a": 1, "b": 2})
  for text in ('{"name": "add", "parameters": {"a": 1, "b": 2}}<|eom_id|>',
               '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}<|eom_id|>',
               ' {"name": "add", "arguments": {"a": 1, "b": 2}}'):
    assert parse_tool_calls(text, "llama3") == [call]
  assert parse_tool_calls("The answer is 3.<|eot_id|>", "llama3") == []
  (bad,) = parse_tool_calls('{"name": "add", "parameters": {"a": 1}<|eom_id|>', "llama3")
  assert isinstance(bad, BadToolCall) and "invalid JSON" in bad.reason
  (two,) = parse_tool_calls('{"name": "add", "parameters": {}} {"name": "add"}', "llama3")
  assert isinstance(two, BadToolCall)  # one call per turn, as the template allows
  with pytest.raises(ValueError, match="unknown tool-call format 'xml'"):
    parse_tool_calls("", "xml")


def _qwen_call(name, **arguments):
  """A call exactly as the Qwen template renders one (so re-rendering the
  conversation reproduces the model's text)."""
  return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call>'


def _episode(env, ref, turns, final, **kw):
  """Runs `turns` through `env`; returns (transcript as the model saw it,
  transformers' rendering of the resulting conversation + `final`)."""
  record = {"prompt": [{"role": "user", "content": "What is 2 + 3?"}]}
  state = env.reset(record)
  transcript = ref.apply_chat_template(record["prompt"], tools=env.tools_schema,
                                       add_generation_prompt=True, tokenize=False, **kw)
  for turn in turns:
    out = env.step(state, turn)
    assert not out.error and not out.done and out.reward == 0.0
    transcript += turn + out.observation
    state = out.state
  conversation = [*state.messages, {"role": "assistant", "content": final}]
  return transcript + final, ref.apply_chat_template(conversation, tools=env.tools_schema,
                                                     tokenize=False, **kw)


def test_qwen_episode_matches_transformers_rendering(toks):
  ours, ref = toks["qwen"]
  env = ToolEnv([add, div, join], ours)
  assert (env.name, env.turn_end) == ("tools", "</tool_call>")
  turns = [_qwen_call("add", a=2, b=3), _qwen_call("join", words=["a", "b"], upper=True, sep=None),
           _qwen_call("div", x=1) + "\n" + _qwen_call("add", a=0, b=0)]  # two calls, one turn
  transcript, rendered = _episode(env, ref, turns, "It is 5.")
  assert transcript + "<|im_end|>\n" == rendered
  out = env.step(env.reset({"prompt": "2+3?"}), turns[0])
  assert out.observation == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n5\n"
                             "</tool_response><|im_end|>\n<|im_start|>assistant\n")
  assert out.state.calls == 1 and out.state.messages[0] == {"role": "user", "content": "2+3?"}


def test_llama3_episode_matches_transformers_rendering(toks):
  ours, ref = toks["llama3"]
  env = ToolEnv([add, div], ours, fmt="llama3", template_kwargs=DATE)
  assert env.turn_end == "<|eom_id|>"
  turns = ['{"name": "add", "parameters": {"a": 2, "b": 3}}<|eom_id|>',
           '<|python_tag|>{"name": "div", "parameters": {"x": 5, "y": 2}}<|eom_id|>']
  transcript, rendered = _episode(env, ref, turns, "It is 5.", **DATE)
  # The model may open a call with <|python_tag|> and ends it with <|eom_id|>;
  # the template re-renders custom-tool calls as bare JSON ending <|eot_id|>.
  seen = transcript.replace("<|python_tag|>", "").replace("<|eom_id|>", "<|eot_id|>")
  assert seen + "<|eot_id|>" == rendered
  out = env.step(env.reset({"prompt": "2+3?"}), turns[0])
  assert out.observation == ('<|start_header_id|>ipython<|end_header_id|>\n\n"5"<|eot_id|>'
                             "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_observation_is_the_rendered_tool_message_delta(toks):
  ours, ref = toks["qwen"]
  tools = [function_schema(add)]
  msgs = [{"role": "user", "content": "hi"},
          {"role": "assistant", "content": "", "tool_calls": [
              {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 1}}}]}]
  results = [{"role": "tool", "name": "add", "content": "2"},
             {"role": "tool", "name": "add", "content": "3"}]
  prefix = ref.apply_chat_template(msgs, tools=tools, tokenize=False)
  full = ref.apply_chat_template(msgs + results, tools=tools, add_generation_prompt=True,
                                 tokenize=False)
  assert tool_observation(ours, msgs, results, tools) == full[len(prefix):]
  closing = "<|im_end|>\n"
  resumed = tool_observation(ours, msgs, results, tools, "</tool_call>")
  assert resumed == closing + full[len(prefix):]


ERRORS = {
    "unknown": (_qwen_call("mul", a=1), "error: unknown tool 'mul'; available: add, div, join"),
    "missing": (_qwen_call("add", a=1), "error: add: missing argument 'b'"),
    "extra": (_qwen_call("add", a=1, b=2, c=3), "error: add: unexpected argument 'c'"),
    "type": (_qwen_call("add", a=1, b="2"), "error: add: argument 'b' must be integer, got \"2\""),
    "bool": (_qwen_call("join", words=["a", 1], upper=1),
             "error: join: argument 'words' must be array, got [\"a\", 1]; "
             "argument 'upper' must be boolean, got 1"),
    "raises": (_qwen_call("div", x=1, y=0),
               "error: div raised ZeroDivisionError: division by zero"),
    "json": ('<tool_call>\n{"name": "add", "arguments": {"a": 1\n</tool_call>',
             "error: malformed tool call: invalid JSON"),
    "shape": ('<tool_call>\n["add", 1, 2]\n</tool_call>',
              'error: malformed tool call: expected {"name": <tool>, "arguments": {...}}; '
              "write <tool_call>"),
    "none": ("I will not call anything.</tool_call>",
             "error: no tool call found; write <tool_call>"),
}


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_failed_actions_are_error_observations(toks, kind):
  env = ToolEnv([add, div, join], toks["qwen"][0])
  turn, message = ERRORS[kind]
  out = env.step(env.reset({"prompt": "go"}), turn)
  assert out.error and not out.done and out.reward == 0.0
  head = "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
  assert out.observation.startswith(head + message), out.observation
  assert out.observation.endswith("\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
  assert out.state.messages[-1]["role"] == "tool"


def test_llama3_error_observation(toks):
  env = ToolEnv([add], toks["llama3"][0], fmt="llama3", template_kwargs=DATE)
  out = env.step(env.reset({"prompt": "go"}), '{"name": "sub", "parameters": {}}<|eom_id|>')
  assert out.error and out.observation.startswith(  # the template writes content with tojson
      "<|start_header_id|>ipython<|end_header_id|>\n\n"
      '"error: unknown tool \'sub\'; available: add"')


def test_call_budget_ends_the_episode(toks):
  env = ToolEnv([add], toks["qwen"][0], max_calls=1)
  state = env.reset({"prompt": "go"})
  first = env.step(state, _qwen_call("add", a=1, b=1))
  assert not first.error and first.state.calls == 1
  second = env.step(first.state, _qwen_call("add", a=1, b=1))
  assert second.error and second.done
  assert "error: tool call limit (1) reached" in second.observation


def test_turn_cut_short_continues(toks):
  """A turn cut by turn_max_tokens has no observation; the next step reads
  the whole turn."""
  env = ToolEnv([add], toks["qwen"][0])
  state = env.reset({"prompt": "go"})
  call = _qwen_call("add", a=1, b=1)
  cut = env.step(state, call[:30])
  assert (cut.observation, cut.error, cut.state.pending) == ("", False, call[:30])
  done = env.step(cut.state, call[30:])
  assert not done.error and "<tool_response>\n2\n" in done.observation
  assert done.state.pending == "" and done.state.messages[-2]["tool_calls"]


def test_inconsistent_templates_raise(toks):
  backend = toks["backend"]
  marks_last = HFTokenizer(backend, {"eos_token": "<|im_end|>"}, chat_templates={
      "default": "{% for m in messages %}{{ m.role }}: {{ m.content }}"
                 "{% if loop.last %} <last>{% endif %}\n{% endfor %}"})
  env = ToolEnv([add], marks_last)
  with pytest.raises(ValueError, match="renders the conversation differently"):
    env.step(env.reset({"prompt": "go"}), _qwen_call("add", a=1, b=1))
  # A template that drops tool calls: the end of the model's turn is unknown.
  no_calls = HFTokenizer(backend, {"eos_token": "<|im_end|>"}, chat_templates={"default": CHATML})
  env = ToolEnv([add], no_calls)
  with pytest.raises(ValueError, match="does not render '</tool_call>'"):
    env.step(env.reset({"prompt": "go"}), _qwen_call("add", a=1, b=1))
