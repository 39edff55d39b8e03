"""Record formats: detection, parsing errors, token ids and loss masks."""

import numpy as np
import pytest

from rankjax import data
from rankjax.data import DataError
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
BOS, EOS = TOK.bos_id, TOK.eos_id


def enc(text):
  return TOK.encode(text)


def assert_example(example, tokens, mask, prefix=""):
  np.testing.assert_array_equal(example[f"{prefix}tokens"], tokens)
  np.testing.assert_array_equal(example[f"{prefix}loss_mask"], mask)
  assert example[f"{prefix}tokens"].dtype == np.int32
  assert example[f"{prefix}loss_mask"].dtype == np.int32


def chat(*turns):
  return [{"role": r, "content": c} for r, c in turns]


# -- detection ----------------------------------------------------------------


@pytest.mark.parametrize("row,expected", [
    ({"text": "a"}, data.LM),
    ({"messages": chat(("user", "a"))}, data.LM),
    ({"prompt": "a", "answer": "1"}, data.PROMPT_ONLY),
    ({"prompt": "a", "completion": "b"}, data.PROMPT_COMPLETION),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, data.PREFERENCE),
    ({"chosen": "ab", "rejected": "ac", "margin": 1.0}, data.PREFERENCE),
    ({"prompt": "a", "completion": "b", "label": True},
     data.UNPAIRED_PREFERENCE),
])
def test_detect_format(row, expected):
  assert data.detect_format(row) == expected


def test_unknown_format_lists_formats():
  with pytest.raises(DataError) as e:
    data.parse_record({"question": "a"}, location="f.jsonl:3")
  msg = str(e.value)
  assert msg.startswith("f.jsonl:3: ")
  for name in data.FORMAT_NAMES:
    assert name in msg
  assert e.value.reason == "unknown_format"


# -- token ids and masks: strings ----------------------------------------------


def test_lm_text():
  ex = data.tokenize_lm(data.parse_record({"text": "hi"}), TOK)
  assert_example(ex, [BOS, *enc("hi"), EOS], [0, 1, 1, 1])


def test_prompt_completion_strings():
  rec = data.parse_record({"prompt": "1+1=", "completion": "2"})
  ex = data.tokenize_prompt_completion(rec, TOK)
  assert_example(ex, [BOS, *enc("1+1="), *enc("2"), EOS],
                 [0, 0, 0, 0, 0, 1, 1])
  ex = data.tokenize_prompt_completion(rec, TOK, completion_only_loss=False)
  assert_example(ex, [BOS, *enc("1+1="), *enc("2"), EOS],
                 [0, 1, 1, 1, 1, 1, 1])


def test_preference_strings_with_margin():
  rec = data.parse_record({"prompt": "q", "chosen": "ab", "rejected": "c",
                           "margin": 2})
  ex = data.tokenize_preference(rec, TOK)
  assert_example(ex, [BOS, *enc("q"), *enc("ab"), EOS], [0, 0, 1, 1, 1],
                 "chosen_")
  assert_example(ex, [BOS, *enc("q"), *enc("c"), EOS], [0, 0, 1, 1],
                 "rejected_")
  assert ex["margin"].dtype == np.float32 and ex["margin"] == 2.0


def test_implicit_prompt_strings_keeps_space_with_completion():
  rec = data.parse_record({"chosen": "Q: sky? blue", "rejected": "Q: sky? red"})
  assert (rec.prompt, rec.chosen, rec.rejected) == ("Q: sky?", " blue", " red")


def test_unpaired_and_unpair():
  rec = data.parse_record({"prompt": "q", "completion": "a", "label": False})
  ex = data.tokenize_unpaired(rec, TOK)
  assert_example(ex, [BOS, *enc("q"), *enc("a"), EOS], [0, 0, 1, 1])
  assert ex["label"] == 0 and ex["label"].dtype == np.int32
  rows = data.unpair_preference_rows(
      [{"chosen": "q a", "rejected": "q b", "id": 7}])
  assert rows == [
      {"id": 7, "prompt": "q", "completion": " a", "label": True},
      {"id": 7, "prompt": "q", "completion": " b", "label": False}]


def test_prompt_only_passes_columns_through():
  rec = data.parse_record({"prompt": "2*3=", "answer": "6", "n": 3})
  ex = data.tokenize_prompt(rec, TOK)
  np.testing.assert_array_equal(ex["prompt_tokens"], [BOS, *enc("2*3=")])
  assert ex["answer"] == "6" and ex["n"] == 3


# -- token ids and masks: conversations ----------------------------------------

# The char template renders "<role>: <content>\n" per message and marks the
# assistant contents (with their newline) in its assistant mask.


def test_lm_messages_all_tokens_and_assistant_only():
  msgs = chat(("user", "hi"), ("assistant", "yo"))
  ids = enc("user: hi\nassistant: yo\n") + [EOS]
  head = len(enc("user: hi\nassistant: "))
  rec = data.parse_record({"messages": msgs})
  assert_example(data.tokenize_lm(rec, TOK), ids, [0] + [1] * (len(ids) - 1))
  assistant = [0] * head + [1] * 4  # "yo\n" + EOS
  assert_example(data.tokenize_lm(rec, TOK, assistant_only_loss=True), ids,
                 assistant)


def test_lm_messages_assistant_only_without_assistant_is_an_error():
  rec = data.parse_record({"messages": chat(("user", "hi"))})
  with pytest.raises(DataError, match="no tokens to train on"):
    data.tokenize_lm(rec, TOK, assistant_only_loss=True)


def test_prompt_completion_messages():
  prompt = chat(("system", "be brief"), ("user", "1+1"))
  rec = data.parse_record({"prompt": prompt,
                           "completion": chat(("assistant", "2"))})
  ex = data.tokenize_prompt_completion(rec, TOK)
  p = enc("system: be brief\nuser: 1+1\nassistant: ")
  assert_example(ex, p + enc("2\n") + [EOS], [0] * len(p) + [1, 1, 1])


def test_completion_only_vs_assistant_only_in_multi_turn_prompt():
  prompt = chat(("user", "a"), ("assistant", "b"), ("user", "c"))
  rec = data.parse_record({"prompt": prompt,
                           "completion": chat(("assistant", "d"))})
  p = enc("user: a\nassistant: b\nuser: c\nassistant: ")
  ids = p + enc("d\n") + [EOS]
  completion = [0] * len(p) + [1, 1, 1]
  assert_example(data.tokenize_prompt_completion(rec, TOK), ids, completion)
  # All assistant turns, including the earlier one inside the prompt.
  earlier = len(enc("user: a\nassistant: "))
  assistant = [0] * len(ids)
  assistant[earlier:earlier + 2] = [1, 1]  # "b\n"
  assistant[-3:] = [1, 1, 1]
  ex = data.tokenize_prompt_completion(
      rec, TOK, completion_only_loss=False, assistant_only_loss=True)
  assert_example(ex, ids, assistant)
  # Both: the intersection, i.e. the completion.
  ex = data.tokenize_prompt_completion(rec, TOK, assistant_only_loss=True)
  assert_example(ex, ids, completion)


def test_preference_messages_implicit_prompt():
  q = ("user", "sky?")
  rec = data.parse_record({"chosen": chat(q, ("assistant", "blue")),
                           "rejected": chat(q, ("assistant", "red"))})
  assert rec.prompt == chat(q)
  ex = data.tokenize_preference(rec, TOK)
  p = enc("user: sky?\nassistant: ")
  assert_example(ex, p + enc("blue\n") + [EOS], [0] * len(p) + [1] * 6,
                 "chosen_")
  assert_example(ex, p + enc("red\n") + [EOS], [0] * len(p) + [1] * 5,
                 "rejected_")


def test_prompt_only_messages_has_generation_prompt():
  rec = data.parse_record({"prompt": chat(("user", "hi"))})
  np.testing.assert_array_equal(data.tokenize_prompt(rec, TOK)["prompt_tokens"],
                                enc("user: hi\nassistant: "))


class _TemplateEndsTurnsWithEos(CharTokenizer):
  """Like chat templates that close each turn with an EOS-class token."""

  def apply_chat_template(self, messages, add_generation_prompt=False,
                          tokenize=False, return_assistant_mask=False):
    ids, mask = [], []
    for m in messages:
      sub, sub_mask = super().apply_chat_template(
          [m], tokenize=True, return_assistant_mask=True)
      ids += sub + [self.eos_id]
      mask += sub_mask + [sub_mask[-1]]
    if add_generation_prompt:
      ids += self.encode("assistant: ")
      mask += [0] * len("assistant: ")
    return (ids, mask) if return_assistant_mask else ids


def test_no_second_eos_when_the_template_emits_one():
  tok = _TemplateEndsTurnsWithEos()
  rec = data.parse_record({"prompt": chat(("user", "q")),
                           "completion": chat(("assistant", "a"))})
  ex = data.tokenize_prompt_completion(rec, tok)
  assert list(ex["tokens"]).count(EOS) == 2  # one per turn, none appended
  assert ex["tokens"][-1] == EOS and ex["loss_mask"][-1] == 1


# -- bad records ---------------------------------------------------------------


@pytest.mark.parametrize("row,field,reason", [
    ({"prompt": "q", "completion": ""}, "completion", "empty"),
    ({"prompt": "q", "completion": 3}, "completion", "wrong_type"),
    ({"prompt": "q", "completion": chat(("assistant", "a"))}, "completion",
     "wrong_type"),  # string prompt, message completion
    ({"prompt": [{"role": "user"}], "completion": chat(("assistant", "a"))},
     "prompt", "wrong_type"),
    ({"prompt": "q", "completion": "a", "label": "yes"}, "label",
     "wrong_type"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "1"}, "margin",
     "wrong_type"),
    ({"chosen": "same", "rejected": "same"}, "chosen", "empty"),
    ({"text": ["not", "text"]}, "text", "wrong_type"),
])
def test_bad_records_name_the_field(row, field, reason):
  with pytest.raises(DataError) as e:
    data.parse_record(row, location="x.jsonl:9")
  assert e.value.field == field and e.value.reason == reason
  assert str(e.value).startswith(f"x.jsonl:9: field {field!r}: ")


def test_missing_field_for_a_given_format():
  with pytest.raises(DataError, match="field 'completion': missing") as e:
    data.parse_record({"prompt": "q"}, data.PROMPT_COMPLETION)
  assert e.value.reason == "missing_field"


def test_untokenizable_text_names_the_field():
  rec = data.parse_record({"prompt": "q", "completion": "caf\u00e9"})
  with pytest.raises(DataError, match="field 'completion'") as e:
    data.tokenize(rec, TOK)
  assert e.value.reason == "untokenizable"
