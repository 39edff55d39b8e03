"""Rewards by name, as `grpo.rewards` / `ppo.rewards` list them:

  correct         the task's verifier: in-graph when the task has a traceable
                  one (arithmetic on the character tokenizer), else the host
                  verifier through `pure_callback`
  format          the completion contains the task's format marker
  eos             the completion ended with an EOS
  rm              the reward model an earlier "rm" stage trained (in-graph)
  env             the multi-turn environment's own rewards (`env.name`),
                  summed over turns (per turn in PPO)
  path.py:name    a TRL-style function `name(prompts, completions, **columns)
                  -> list[float | None]` from a Python file: prompts as the
                  dataset gives them (text or messages), completions as text
                  (or `[{"role": "assistant", "content": text}]` when the
                  prompts are messages), every reference column by name

A user function is called once on two records when the list is built,
so a missing file or function, a wrong return length or a non-number stops
the run before anything compiles, naming the file and function.
"""

from __future__ import annotations

from typing import Callable, Sequence

from rankjax.data import tasks as tasks_lib
from rankjax.errors import UserInputError
from rankjax.rewards._builtin import (contains_reward, env_reward, eos_reward,
                                      reward_model_score, verifier_reward)
from rankjax.rewards._core import Reward
from rankjax.rewards._host import call_reward, host_reward

BUILTIN = ("correct", "format", "eos", "rm", "env")


def is_function(name: str) -> bool:
  """Whether a reward entry names a Python function ("file.py:name")."""
  return ":" in name


def is_chat(records: Sequence[dict]) -> bool:
  """TRL's rule: a dataset is conversational when its prompts are messages."""
  return bool(records) and not isinstance(records[0].get("prompt"), str)


def _example_completion(record: dict, chat: bool):
  text = record.get("completion", "")
  if isinstance(text, list):  # a conversational completion: its last message
    text = text[-1].get("content", "") if text else ""
  return [{"role": "assistant", "content": text}] if chat else text


def user_function(spec: str, records: Sequence[dict], task: tasks_lib.Task) -> Callable:
  """The function `spec` names, checked on the first record."""
  fn = tasks_lib.load_callable(spec, "reward")
  if records:
    # Two completions (the first record's twice when there is one): a
    # function that ignores its inputs' length shows it here.
    sample = (list(records[:2]) * 2)[:2]
    chat = is_chat(sample)
    call_reward(fn, spec, [r["prompt"] for r in sample],
                [_example_completion(r, chat) for r in sample], task.columns(sample))
  return fn


def from_names(names: Sequence[str], weights: Sequence[float] = (), *, task: tasks_lib.Task,
               tokenizer, records: Sequence[dict], reward_model=None) -> list[Reward]:
  """The rewards `names` lists, over `records` (the rows a batch's
  `example_index` points into)."""
  if weights and len(weights) != len(names):
    raise UserInputError(f"rewards {list(names)}: {len(weights)} weights for "
                         f"{len(names)} rewards")
  weights = tuple(weights) or (1.0,) * len(names)
  out = []
  for name, w in zip(names, weights):
    if is_function(name):
      fn = user_function(name, records, task)
      out.append(host_reward(fn, tokenizer, columns=task.columns(records), name=name,
                             weight=w, prompts=[r["prompt"] for r in records],
                             chat=is_chat(records)))
    elif name == "correct":
      out.append(verifier_reward(task, tokenizer, records, weight=w))
    elif name == "format":
      if task.format_marker is None:
        raise UserInputError(f"reward 'format': task {task.name!r} has no format marker")
      out.append(contains_reward(tokenizer.encode(task.format_marker), weight=w))
    elif name == "eos":
      out.append(eos_reward(weight=w))
    elif name == "env":
      out.append(env_reward(weight=w))
    elif name == "rm":
      if reward_model is None:
        raise UserInputError("reward 'rm' needs a reward model: put an 'rm' stage before "
                             "this one")
      out.append(reward_model_score(reward_model, weight=w))
    else:
      raise UserInputError(f"unknown reward {name!r}: one of {', '.join(BUILTIN)}, or "
                           "path/to/file.py:function")
  return out


def verifier(task: tasks_lib.Task, names: Sequence[str], *,
             threshold: float = 1.0) -> Callable[[str, dict], float]:
  """`(completion_text, record) -> score`: the task's verifier, or, for a
  task without one, 1.0 when the first reward function in `names` gives at
  least `threshold` (else 0.0; "does not apply" counts as wrong)."""
  if task.has_verifier:
    return lambda text, record: float(task.verify(text, record) or 0.0)
  specs = [n for n in names if is_function(n)]
  if not specs:
    raise UserInputError(f"task {task.name!r} is not verifiable: it has no verifier, and "
                         "grpo.rewards lists no reward function (path/to/file.py:function) "
                         "to verify with")
  fn = tasks_lib.load_callable(specs[0], "reward")

  def verify(text: str, record: dict) -> float:
    chat = is_chat([record])
    value = call_reward(fn, specs[0], [record["prompt"]],
                        [_example_completion({"completion": text}, chat)],
                        task.columns([record]))[0]
    return float(value >= threshold)
  return verify


def check_functions(names: Sequence[str], task: tasks_lib.Task) -> None:
  """Loads and calls every `file.py:function` entry of `names` on two of the
  task's records: a run checks the reward lists it will use before its
  first stage, so a bad function fails before any training."""
  functions = [n for n in names if is_function(n)]
  unknown = [n for n in names if not is_function(n) and n not in BUILTIN]
  if unknown:
    raise UserInputError(f"unknown reward {unknown[0]!r}: one of {', '.join(BUILTIN)}, or "
                         "path/to/file.py:function")
  if functions:
    records = task.records("train") or task.eval_records(2)
    for spec in functions:
      user_function(spec, records, task)
