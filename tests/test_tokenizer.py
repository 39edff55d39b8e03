"""Tokenizers: HFTokenizer parity with transformers, CharTokenizer basics.

Tokenizers are trained offline on a few sentences (no downloads); each test
directory is loaded both by rankjax and by transformers' AutoTokenizer, and
every output must agree exactly.
"""

import functools
import json

import jinja2
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers import processors, trainers

from rankjax.tokenizer import CharTokenizer, HFTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|eom_id|>"]
CORPUS = ["You are a helpful assistant.", "What is 2 + 2? It is 4.",
          "Hello! How can I help you today?", "The capital of France is Paris.",
          "system user assistant tool", "Cutting Knowledge Date: December 2023"]

# Qwen2.5-style ChatML: default system prompt, tools rendered with tojson.
CHATML = r"""
{%- if tools %}
{{- '<|im_start|>system\n' + (messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.') + '\n\n<tools>' }}
{%- for tool in tools %}{{- '\n' + tool | tojson }}{%- endfor %}
{{- '\n</tools><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if not (loop.first and message.role == 'system') %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

# Llama-3.1-style: bos_token, header ids, <|eot_id|>, strftime_now.
LLAMA3 = r"""{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
{%- set system_message = messages[0]['content']|trim %}
{%- set messages = messages[1:] %}
{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\nToday Date: " + date_string + "\n\n" }}
{{- system_message }}{{- "<|eot_id|>" }}
{%- for message in messages %}
{%- if message['role'] not in ['user', 'assistant'] %}{{- raise_exception('Roles must be user or assistant') }}{%- endif %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"""

# ChatML with {% generation %} around assistant replies (TRL style), written
# with plain block tags so trim_blocks/lstrip_blocks decide the whitespace.
CHATML_GEN = r"""{% for message in messages %}
    {% if message.role == 'assistant' %}
{{ '<|im_start|>assistant\n' }}{% generation %}{{ message.content + '<|im_end|>' }}{% endgeneration %}

    {% else %}
{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hi. How can I help?"}],
    [{"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "And 2 + 2? café ☕"},
     {"role": "assistant", "content": "It is 4.  "}],
]


def _train_bpe():
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  return tok


def _train_unsplit_bpe():
  """No pre-tokenizer: merges cross the template/reply boundary, so tokens
  like 'assistant\\nParis.' straddle a generation span's start."""
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.decoder = decoders.Fuse()
  texts = [f"assistant\n{m['content']}" for c in CONVERSATIONS for m in c]
  trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                special_tokens=["<unk>"] + SPECIALS)
  tok.train_from_iterator(CORPUS + texts * 3, trainer)
  return tok


def _save(path, tok, config, **extra_files):
  path.mkdir()
  tok.save(str(path / "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False, **config}
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  for name, content in extra_files.items():
    (path / name.replace("__", ".")).write_text(content)
  return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  qwen = _train_bpe()
  llama = _train_bpe()
  bos = llama.token_to_id("<|begin_of_text|>")
  llama.post_processor = processors.TemplateProcessing(
      single="<|begin_of_text|> $A",
      special_tokens=[("<|begin_of_text|>", bos)])
  # Baked-in truncation must not cut encode() (transformers ignores it).
  llama.enable_truncation(max_length=4)
  eos_ids = [llama.token_to_id(t) for t in
             ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
  return {
      "chatml": _save(root / "chatml", qwen, {
          "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
          "bos_token": None, "chat_template": CHATML}),
      "llama3": _save(root / "llama3", llama, {
          "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
          "chat_template": LLAMA3},
          generation_config__json=json.dumps({"eos_token_id": eos_ids})),
      # Named templates in the config, and a generation-marking default.
      "gen": _save(root / "gen", qwen, {
          "eos_token": {"__type": "AddedToken", "content": "<|im_end|>",
                        "special": True},
          "chat_template": [{"name": "default", "template": CHATML_GEN},
                            {"name": "tool_use", "template": CHATML}]}),
      # chat_template.jinja wins over tokenizer_config, as in transformers.
      "jinja": _save(root / "jinja", qwen, {
          "eos_token": "<|im_end|>", "chat_template": "ignored"},
          chat_template__jinja=CHATML_GEN),
      "straddle": _save(root / "straddle", _train_unsplit_bpe(), {
          "eos_token": "<|im_end|>", "chat_template": CHATML_GEN}),
  }


@functools.lru_cache
def _both(path):
  return HFTokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(
      str(path))


@pytest.mark.parametrize("name", ["chatml", "llama3", "gen", "jinja",
                                  "straddle"])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen_prompt", [False, True])
def test_chat_template_matches_transformers(dirs, name, conv, gen_prompt):
  ours, ref = _both(dirs[name])
  msgs = CONVERSATIONS[conv]
  kw = {"date_string": "26 Jul 2024"} if name == "llama3" else {}
  text = ours.apply_chat_template(msgs, gen_prompt, **kw)
  assert text == ref.apply_chat_template(
      msgs, add_generation_prompt=gen_prompt, tokenize=False, **kw)
  ids = ours.apply_chat_template(msgs, gen_prompt, tokenize=True, **kw)
  assert ids == ref.apply_chat_template(
      msgs, add_generation_prompt=gen_prompt, return_dict=False, **kw)
  for skip in (False, True):
    assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip)
  assert ours.decode(ids, skip_special_tokens=False) == text
  if "{% generation %}" not in ours.chat_template:
    return
  ids, mask = ours.apply_chat_template(msgs, gen_prompt,
                                       return_assistant_mask=True)
  out = ref.apply_chat_template(
      msgs, add_generation_prompt=gen_prompt, return_dict=True,
      return_assistant_tokens_mask=True)
  assert (ids, mask) == (out["input_ids"], out["assistant_masks"])
  # Masked: the assistant replies and their <|im_end|>, plus (overlap, not
  # containment) whole tokens that straddle a reply's start.
  head = "assistant\n" if name == "straddle" else ""
  replies = "".join(head + m["content"] + "<|im_end|>" for m in msgs
                    if m["role"] == "assistant")
  assert ours.decode([i for i, m in zip(ids, mask) if m], False) == replies


def test_tools_and_template_kwargs(dirs):
  ours, ref = _both(dirs["gen"])  # tools select the "tool_use" template
  tools = [{"type": "function", "function": {"name": "météo", "parameters": {
      "type": "object", "properties": {"city": {"type": "string"}}}}}]
  text = ours.apply_chat_template(CONVERSATIONS[0], True, tools=tools)
  assert '"météo"' in text  # tojson keeps non-ASCII, no HTML escaping
  assert text == ref.apply_chat_template(
      CONVERSATIONS[0], tools=tools, add_generation_prompt=True,
      tokenize=False)
  # Without date_string the Llama template falls back to strftime_now.
  ours, ref = _both(dirs["llama3"])
  assert ours.apply_chat_template(CONVERSATIONS[0]) == ref.apply_chat_template(
      CONVERSATIONS[0], tokenize=False)


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_encode_decode_and_special_ids(dirs, name):
  ours, ref = _both(dirs[name])
  text = "Hello! What is 2 + 2? <|im_end|> café"
  for add in (False, True):  # Llama 3's post-processor adds BOS, Qwen's not
    assert ours.encode(text, add) == ref(text, add_special_tokens=add)[
        "input_ids"]
  ids = ours.encode(text, add_bos=True)
  assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
  assert ours.vocab_size == len(ref)
  assert (ours.bos_id, ours.eos_id) == (ref.bos_token_id, ref.eos_token_id)
  assert ours.pad_id == (ref.pad_token_id if ref.pad_token_id is not None
                         else ref.eos_token_id)
  eos = {"chatml": ["<|im_end|>"],  # Llama: + generation_config.json ids
         "llama3": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"]}[name]
  assert ours.eos_ids == tuple(ours.token_id(t) for t in eos)


def test_decode_cleanup_matches_transformers(tmp_path):
  # Word-level models get transformers' legacy " ." clean-up; BPE does not.
  vocab = {w: i for i, w in enumerate(["[UNK]", "</s>", "hello", ".", "it",
                                       "'s", "ok", "?"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  path = _save(tmp_path / "wl", tok, {"eos_token": "</s>",
                                      "clean_up_tokenization_spaces": True})
  ours, ref = _both(path)
  ids = ours.encode("hello . it 's ok ?")
  assert ours.decode(ids) == ref.decode(ids) == "hello. it's ok?"


def test_errors(dirs, tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    HFTokenizer.from_dir(tmp_path)
  tok = load_tokenizer(dirs["chatml"])
  bad = [{"role": "user", "content": "hi"}, {"role": "assistant"}]
  with pytest.raises(ValueError, match="message 1"):
    tok.apply_chat_template(bad)
  with pytest.raises(ValueError, match="message 0"):
    tok.apply_chat_template(["hi"])
  with pytest.raises(ValueError, match="does not mark assistant tokens"):
    tok.apply_chat_template(CONVERSATIONS[1], return_assistant_mask=True)
  llama = load_tokenizer(dirs["llama3"])
  with pytest.raises(jinja2.TemplateError, match="Roles must be"):
    llama.apply_chat_template([{"role": "tool", "content": "x"}])
  backend = Tokenizer.from_file(str(dirs["chatml"] / "tokenizer.json"))
  escape = HFTokenizer(backend, {"eos_token": "<|im_end|>"},
                       chat_templates={"default": "{{ namespace(_x=1) }}"})
  with pytest.raises(jinja2.exceptions.SecurityError):
    escape.apply_chat_template(CONVERSATIONS[0])


def test_char_tokenizer_round_trip_and_mask():
  tok = CharTokenizer()
  text = "Q: 12 + 30?\nA: 42."
  ids = tok.encode(text, add_bos=True)
  assert ids[0] == tok.bos_id and tok.decode(ids) == text
  assert tok.decode([tok.bos_id, tok.eos_id], False) == "<bos><eos>"
  assert max(ids) < tok.vocab_size and tok.eos_ids == (tok.eos_id,)
  msgs = [{"role": "user", "content": "1+1"},
          {"role": "assistant", "content": "2"}]
  ids, mask = tok.apply_chat_template(msgs, return_assistant_mask=True)
  assert tok.decode(ids) == "user: 1+1\nassistant: 2\n"
  assert tok.decode([i for i, m in zip(ids, mask) if m]) == "2\n"
  with pytest.raises(ValueError, match="position 1"):
    tok.encode("a\tb")


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_saved_tokenizer_loads_from_the_export(dirs, tmp_path, name):
  """An export directory carries its tokenizer: `model.path=<export>` alone
  gives back the same encoding and chat template."""
  tok = load_tokenizer(dirs[name])
  tok.save(tmp_path / "export")
  again = load_tokenizer(tmp_path / "export")
  text = "Hello! What is 2 + 2?"
  assert again.encode(text) == tok.encode(text) and again.eos_ids == tok.eos_ids
  msgs = [{"role": "user", "content": "2+2?"}]
  assert again.apply_chat_template(msgs) == tok.apply_chat_template(msgs)


def test_char_tokenizer_export_marker(tmp_path):
  CharTokenizer().save(tmp_path)
  assert isinstance(load_tokenizer(tmp_path), CharTokenizer)
  (tmp_path / "rankjax_tokenizer.json").write_text('{"tokenizer": "bytes"}')
  with pytest.raises(ValueError, match="rankjax_tokenizer.json: unknown tokenizer 'bytes'"):
    load_tokenizer(tmp_path)
