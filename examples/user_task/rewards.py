"""Reward functions with TRL's signature for the word-reversal example:
fn(prompts, completions, **columns) -> list[float | None]. Columns of the
dataset (here `answer`) arrive as keyword lists, one value per completion."""


def exact_match(prompts, completions, answer, **kwargs):
  """1.0 when the completion is the reversed word, else 0.0."""
  return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]


def first_letter(prompts, completions, answer, **kwargs):
  """Partial credit: 1.0 when the first letter is right."""
  return [1.0 if c.strip()[:1] == a[:1] else 0.0 for c, a in zip(completions, answer)]
