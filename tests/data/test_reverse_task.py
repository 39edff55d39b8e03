"""The built-in word-reversal task: a module of rankjax.data.tasks with
`make(cfg)` is all it takes (the config accepts `data.source=reverse` and
every stage reads it)."""

import json

from rankjax import config as config_lib
from rankjax import launch
from rankjax.data import tasks
from rankjax.data.tasks import reverse


def test_splits_are_disjoint_and_verify():
  cfg = config_lib.Config(data=config_lib.DataCfg(source="reverse", num_train=200, num_eval=50))
  task = tasks.from_config(config_lib.validate(cfg))
  train, held_out = task.records("train"), task.records("eval")
  assert len(train) == 200 and len(held_out) == 50
  assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
  r = train[0]
  assert r["prompt"] == f"reverse {r['answer'][::-1]}:"
  assert task.verify(r["completion"] + "\nmore", r) == 1.0
  assert task.verify(r["completion"][::-1] + "x", r) == 0.0
  assert "reverse" in tasks.source_names()
  assert reverse.generate("train", 5, seed=1) == reverse.generate("train", 5, seed=1)


def test_reverse_through_launch(tmp_path):
  argv = ["--workdir", str(tmp_path), "--config.data.source=reverse",
          "--config.pipeline=sft,grpo,eval", "--config.sft.steps=2", "--config.grpo.steps=1",
          "--config.grpo.num_prompts=4", "--config.grpo.group_size=2",
          "--config.data.num_train=64", "--config.eval.num_problems=4",
          "--config.eval.num_samples=2", "--config.model.hidden_size=32",
          "--config.model.num_layers=1", "--config.model.intermediate_size=64",
          "--config.sample.max_new_tokens=4", "--config.checkpoint.export_hf=false"]
  assert launch.main(argv) == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["grpo"]["num_problems"] == 4 and 0.0 <= summary["grpo"]["pass@1"] <= 1.0
