"""Prompt templates as plain text functions, and answer extraction for them.

Prompting is the cheapest re-ranking: it moves probability mass toward
reasoning that ends in the right answer without touching the weights.

* `zero_shot_cot`: Kojima et al. 2022 (arXiv 2205.11916), "Q: [X]\\nA: Let's
  think step by step." — the trigger phrase starts the model's answer.
* `think_prompt`: the R1-style format (DeepSeek-R1, arXiv 2501.12948):
  reasoning inside `<think>...</think>`, then the final answer.

`rankjax.data.tasks.encode_prompt` turns prompt text into the ids the model
sees.
"""

from __future__ import annotations

COT_TRIGGER = "Let's think step by step."
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

THINK_INSTRUCTION = (
    "Think about the problem inside <think> </think>, then write the final "
    "answer after </think>.")


def zero_shot_cot(question: str, trigger: str = COT_TRIGGER) -> str:
  """Zero-shot chain of thought (Kojima et al. 2022): "Q: {question}\\nA:
  {trigger}"; the model continues after the trigger."""
  return f"Q: {question}\nA: {trigger}"


def think_prompt(question: str, instruction: str = THINK_INSTRUCTION) -> str:
  """The think-tag format: an instruction, the question, and an open
  `<think>` for the model to continue:

      {instruction}\\n{question}\\n<think>

  The model should write its reasoning, `</think>`, then the answer
  (optionally wrapped in `<answer>...</answer>`); `extract_think_answer`
  reads it back. An empty instruction gives "{question}\\n<think>".
  """
  head = f"{instruction}\n" if instruction else ""
  return f"{head}{question}\n{THINK_OPEN}"


def format_think(reasoning: str, answer: str) -> str:
  """A think-format completion (for SFT targets / tests): the continuation
  of `think_prompt`, "{reasoning}</think>\\n{answer}"."""
  return f"{reasoning}{THINK_CLOSE}\n{answer}"


def split_think(text: str) -> tuple[str, str] | None:
  """(reasoning, rest) around the LAST `</think>`; None when it is missing
  (the model never finished thinking). A leading `<think>` is dropped."""
  at = text.rfind(THINK_CLOSE)
  if at < 0:
    return None
  reasoning = text[:at]
  if reasoning.lstrip().startswith(THINK_OPEN):
    reasoning = reasoning.lstrip()[len(THINK_OPEN):]
  return reasoning, text[at + len(THINK_CLOSE):]


def extract_think_answer(text: str) -> str | None:
  """The answer of a think-format completion, or None.

  After the last `</think>`: the content of the first `<answer>...</answer>`
  if there is one, else the first non-empty line; stripped. None when
  `</think>` is missing, the answer tag is unclosed or the answer is empty.
  """
  parts = split_think(text)
  if parts is None:
    return None
  rest = parts[1]
  if ANSWER_OPEN in rest:
    start = rest.index(ANSWER_OPEN) + len(ANSWER_OPEN)
    end = rest.find(ANSWER_CLOSE, start)
    answer = rest[start:end].strip() if end >= 0 else ""
  else:
    lines = [line.strip() for line in rest.split("\n") if line.strip()]
    answer = lines[0] if lines else ""
  return answer or None
