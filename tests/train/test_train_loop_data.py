"""Host loop, optimizer factory and the built-in preference pairs (no model
compiles here except trivial ones)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankjax import train
from rankjax.config import OptimCfg
from rankjax.data import tasks
from train_helpers import tiny_model


def test_preference_pairs_are_deterministic_and_wrong():
  for cot in (False, True):
    task = tasks.ArithmeticTask(ops=("add", "sub", "mul"), max_digits=2, cot=cot)
    records = tasks.generate(task, "train", 50)
    marker = tasks.ANSWER_MARKER if cot else None
    pairs = tasks.preference_records(records, seed=3, marker=marker)
    assert pairs == tasks.preference_records(records, seed=3, marker=marker)
    for r, p in zip(records, pairs):
      assert p["prompt"] == r["prompt"] and p["chosen"] == r["completion"]
      assert tasks.verify(p["chosen"], r["answer"], cot=cot) == 1.0
      assert tasks.verify(p["rejected"], r["answer"], cot=cot) == 0.0
      assert tasks.extract_answer(p["rejected"], cot=cot) is not None  # well-formed, wrong
      if cot:  # the reasoning is kept; only the final answer differs
        assert p["rejected"].rsplit("\n", 1)[0] == p["chosen"].rsplit("\n", 1)[0]


def test_schedule_and_decay_mask():
  cfg = OptimCfg(learning_rate=1.0, warmup_steps=10, schedule="cosine")
  sched = train.make_schedule(cfg, 110)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(60), sched(110)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  lin = train.make_schedule(OptimCfg(learning_rate=2.0, warmup_steps=0, schedule="linear"), 10)
  np.testing.assert_allclose([lin(0), lin(5), lin(10)], [2.0, 1.0, 0.0], atol=1e-6)
  mask = nnx.to_pure_dict(train.decay_mask(nnx.state(tiny_model(), nnx.Param)))
  assert mask["layers"]["q"] and mask["embed"] and mask["lm_head"]
  assert not mask["layers"]["attn_norm"] and not mask["final_norm"]


def _fake_step(nonfinite_at=()):
  def step(state, batch):
    state = state + 1
    return state, {"loss": jnp.float32(1.0 / state),
                   "nonfinite": jnp.float32(int(state) in nonfinite_at),
                   "zero_target_batch": jnp.float32(0)}
  return step


def _batches(n=100):
  return iter([{"tokens": np.zeros((2, 4), np.int32)}] * n)


def test_loop_writes_metrics_jsonl_and_tensorboard(tmp_path):
  writer = train.MetricsWriter(tmp_path, "sft")
  sh = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)),
                                  jax.sharding.PartitionSpec())
  state, summary = train.train_loop(
      jnp.int32(0), _fake_step(nonfinite_at=(3, 4)), _batches(),
      train.LoopConfig(name="sft", steps=5, log_every=2, eval_every=5),
      batch_shardings=sh, writer=writer, eval_fn=lambda s: {"loss": 0.25})
  writer.close()
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 5]
  np.testing.assert_allclose(train_rows[0]["loss"], (1 + 0.5) / 2)   # averaged
  assert [r["nonfinite"] for r in train_rows] == [0, 2, 0]           # counted
  assert all(r["tokens_per_s"] > 0 and r["stage"] == "sft" for r in train_rows)
  assert rows[-1] == {"step": 5, "stage": "sft", "eval/loss": 0.25}
  assert summary["nonfinite_steps"] == 2 and summary["steps"] == 5
  assert list((tmp_path / "tensorboard" / "sft").glob("events.out.tfevents*"))


def test_loop_stops_on_nonfinite_when_asked(tmp_path):
  sh = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)),
                                  jax.sharding.PartitionSpec())
  _, summary = train.train_loop(
      jnp.int32(0), _fake_step(nonfinite_at=(3,)), _batches(),
      train.LoopConfig(steps=10, log_every=100, on_nonfinite="stop"), batch_shardings=sh)
  assert summary["steps"] == 3 and summary["nonfinite_steps"] == 1


def test_loop_stops_when_data_runs_out():
  sh = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)),
                                  jax.sharding.PartitionSpec())
  _, summary = train.train_loop(jnp.int32(0), _fake_step(), _batches(4),
                                train.LoopConfig(steps=10, log_every=3), batch_shardings=sh)
  assert summary["steps"] == 4
