"""A task no built-in knows, through `python -m rankjax.launch` only: a JSONL
of prompts with an extra column and a file of TRL-style reward functions,
SFT -> eval -> GRPO -> eval -> rerank, with text prompts (character
tokenizer) and with chat-message prompts (a tiny HF ChatML tokenizer)."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rankjax import launch

REWARDS = '''
def exact_match(prompts, completions, answer, **kwargs):
  return [1.0 if _text(c).strip() == a else 0.0 for c, a in zip(completions, answer)]


def first_letter(prompts, completions, answer, **kwargs):
  assert len(prompts) == len(completions) == len(answer)
  return [1.0 if _text(c).strip()[:1] == a[:1] else 0.0 for c, a in zip(completions, answer)]


def everything(prompts, completions, **kwargs):
  return [1.0] * len(completions)


def wrong_length(prompts, completions, **kwargs):
  return [1.0]


def _text(completion):
  # Chat prompts: completions arrive as [{"role": "assistant", "content": ...}].
  return completion if isinstance(completion, str) else completion[0]["content"]
'''

TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.data.batch_size=8", "--config.sft.steps=3", "--config.grpo.steps=2",
        "--config.grpo.num_prompts=4", "--config.grpo.group_size=2", "--config.log_every=1",
        "--config.eval.num_problems=4", "--config.eval.num_samples=2",
        "--config.sample.max_new_tokens=4", "--config.checkpoint.export_hf=false"]


def _words(n, seed):
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(list("abcdefgh"), size=int(rng.integers(3, 5)))) for _ in range(n)]


def _write(tmp_path, *, chat: bool):
  def row(w):
    prompt = f"reverse {w}:"
    if chat:
      return {"prompt": [{"role": "user", "content": prompt}],
              "completion": [{"role": "assistant", "content": w[::-1]}], "answer": w[::-1]}
    return {"prompt": prompt, "completion": w[::-1], "answer": w[::-1]}
  for name, words in (("train.jsonl", _words(32, 0)), ("eval.jsonl", _words(8, 1))):
    (tmp_path / name).write_text("".join(json.dumps(row(w)) + "\n" for w in words))
  (tmp_path / "my_rewards.py").write_text(REWARDS)


def _launch(tmp_path, *extra):
  rewards = tmp_path / "my_rewards.py"
  argv = ["--config", "configs/user_task.py", "--workdir", str(tmp_path / "run"),
          f"--config.data.path={tmp_path / 'train.jsonl'}",
          f"--config.data.eval_path={tmp_path / 'eval.jsonl'}",
          f"--config.grpo.rewards={rewards}:exact_match,{rewards}:first_letter,eos",
          "--config.grpo.reward_weights=1.0,0.5,0.1", *TINY, *extra]
  return launch.main(argv)


def _check_summary(tmp_path):
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["evaluated"] == ["sft", "grpo"]
  for stage in ("sft", "grpo"):
    for key in ("pass@1", "pass@2", "maj@2", "best_of_2", "best_of_2/reward"):
      assert 0.0 <= summary[stage][key] <= 1.0, (stage, key)
  rerank = summary["rerank"]
  assert rerank["model"] == "grpo" and "best_of_2/reward" in rerank
  assert set(rerank["best_of_n_curves"]) == {"loglik", "reward"}
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  grpo = [r for r in rows if r["stage"] == "grpo"]
  assert len(grpo) == 2
  # Both user functions ran inside the compiled step, under their own names.
  for name in ("exact_match", "first_letter"):
    key = f"rewards/{tmp_path / 'my_rewards.py'}:{name}"
    assert all(0.0 <= r[key] <= 1.0 for r in grpo), key


def test_user_jsonl_and_reward_file_through_launch(tmp_path, monkeypatch):
  monkeypatch.chdir(_repo_root())
  _write(tmp_path, chat=False)
  assert _launch(tmp_path) == 0
  _check_summary(tmp_path)


def _chatml_tokenizer(path):
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([f"user\nreverse {w}:\nassistant\n{w[::-1]}" for w in _words(64, 2)],
                          trainer)
  path.mkdir()
  tok.save(str(path / "tokenizer.json"))
  # ChatML with {% generation %} around assistant replies (TRL style): the
  # data layer reads the assistant mask of conversational completions from it.
  template = ("{% for m in messages %}{% if m.role == 'assistant' %}"
              "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ m.content + '<|im_end|>' }}"
              "{% endgeneration %}{{ '\\n' }}{% else %}"
              "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
              "{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
  (path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
      "pad_token": "<|endoftext|>", "bos_token": None, "chat_template": template}))
  return path


def test_chat_prompts_with_a_hf_tokenizer_through_launch(tmp_path, monkeypatch):
  monkeypatch.chdir(_repo_root())
  _write(tmp_path, chat=True)
  tok = _chatml_tokenizer(tmp_path / "tok")
  assert _launch(tmp_path, f"--config.tokenizer.path={tok}",
                 "--config.data.max_prompt_length=24", "--config.data.max_length=40") == 0
  _check_summary(tmp_path)


@pytest.mark.parametrize("threshold,expected", [(1.0, 1.0), (2.0, 0.0)])
def test_first_reward_function_is_the_verifier(tmp_path, monkeypatch, threshold, expected):
  """A file task has no verifier: pass@k counts a sample correct when the
  first reward function gives at least eval.pass_threshold."""
  monkeypatch.chdir(_repo_root())
  _write(tmp_path, chat=False)
  rewards = tmp_path / "my_rewards.py"
  assert _launch(tmp_path, "--config.pipeline=eval", f"--config.eval.pass_threshold={threshold}",
                 f"--config.grpo.rewards={rewards}:everything,{rewards}:exact_match",
                 "--config.grpo.reward_weights=1,1") == 0
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["base"]["pass@1"] == expected


def test_a_bad_reward_function_stops_before_compiling(tmp_path, monkeypatch, capsys):
  """Checked before the first stage: SFT never starts (no checkpoints)."""
  monkeypatch.chdir(_repo_root())
  _write(tmp_path, chat=False)
  rewards = tmp_path / "my_rewards.py"
  for spec, message in ((f"{rewards}:wrong_length", "returned 1 values for 2 completions"),
                        (f"{rewards}:nope", "defines no function 'nope'"),
                        (f"{tmp_path}/missing.py:f", "no such file"),
                        ("corect", "unknown reward 'corect'")):
    assert _launch(tmp_path, "--config.pipeline=sft,grpo", f"--config.grpo.rewards={spec}",
                   "--config.grpo.reward_weights=1") == 2
    assert not (tmp_path / "run" / "checkpoints").exists()
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err, err
    assert spec.split(":")[0] in err


def _repo_root():
  import pathlib
  return pathlib.Path(__file__).resolve().parent.parent


PY_TASK = '''
from rankjax.data import tasks


class Reverse(tasks.Task):
  name = "reverse"

  def records(self, split):
    words = ["abc", "race", "level", "dog", "cat", "sun", "moon", "tree"] * 2
    if split == "eval":
      words = ["noon", "pig"]
    return [{"prompt": f"reverse {w}:", "completion": w[::-1], "answer": w[::-1]}
            for w in words]

  @property
  def has_verifier(self):
    return True

  def verify(self, text, record):
    return float(text.strip() == record["answer"])


def make_task():
  return Reverse()
'''


def test_a_python_task_through_launch(tmp_path, monkeypatch):
  """`--config.task=file.py:make_task`: every stage reads the task the file
  builds (its verifier counts pass@k; `correct` uses it as a host reward)."""
  monkeypatch.chdir(_repo_root())
  (tmp_path / "my_task.py").write_text(PY_TASK)
  argv = ["--config", "configs/user_task.py", "--workdir", str(tmp_path / "run"),
          f"--config.task={tmp_path / 'my_task.py'}:make_task", "--config.grpo.rewards=correct",
          "--config.pipeline=sft,grpo,eval", *TINY]
  assert launch.main(argv) == 0
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["grpo"]["num_problems"] == 2 and 0.0 <= summary["grpo"]["pass@1"] <= 1.0
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert any("rewards/correct" in r for r in rows if r["stage"] == "grpo")
