"""`python -m rankjax.bench data`: is the loader ever the bottleneck?

Measures, in one run, the grain pipeline's throughput (examples/s and
tokens/s, tokenised + padded-or-packed + batched) on built-in arithmetic
prompt/completion records, and the SFT train step's consumption rate on the
same batches with the `configs/sft.py` model. The ratio loader/step says how
many times faster the loader produces batches than the step eats them.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import numpy as np

from rankjax import data, parallel, run as run_lib, train
from rankjax.bench import _common
from rankjax.config import OptimCfg, load
from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer


def _pipeline(records, packing: bool, batch: int, max_length: int):
  source = data.RecordSource(records, name="arithmetic")
  cfg = data.PipelineConfig(global_batch_size=batch, max_length=max_length, seed=0,
                            shuffle=True, num_epochs=None, packing=packing)
  return data.build_pipeline(source, CharTokenizer(), cfg)


def _loader_rate(records, packing, batch, max_length, n_batches):
  it = iter(_pipeline(records, packing, batch, max_length))
  next(it)  # start-up (reader threads, first shuffle) is not steady state
  t0 = time.perf_counter()
  batches = list(itertools.islice(it, n_batches))
  dt = time.perf_counter() - t0
  tokens = sum(int(np.sum(b["segment_ids"] > 0)) for b in batches)
  examples = sum(int(np.sum(np.max(b["segment_ids"], axis=1))) for b in batches)
  return {"batches_per_s": n_batches / dt, "examples_per_s": examples / dt,
          "tokens_per_s": tokens / dt, "batch_shape": list(batches[0]["tokens"].shape)}, batches


def _step_rate(batches, repeats):
  recipe = load("configs/sft.py")
  model = run_lib.build_model(recipe, CharTokenizer())
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  tx = train.make_optimizer(OptimCfg(), 1000)
  state, sh = train.create_train_state(model, tx, mesh)
  bsh = train.batch_sharding(mesh)
  step = train.jit_step(train.sft_step, sh, bsh)
  holder = {"state": state, "i": 0}

  def one():
    b = batches[holder["i"] % len(batches)]
    holder["i"] += 1
    holder["state"], m = step(holder["state"], train.put_batch(b, bsh))
    return m["loss"]

  timing = _common.time_call(one, repeats)
  return {"steps_per_s": 1.0 / timing.median_s, "compile_s": timing.compile_s,
          "num_params": model.config.num_params}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m rankjax.bench data")
  _common.add_common_args(parser)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--max-length", type=int, default=32)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--examples", type=int, default=20000)
  args = parser.parse_args(argv)
  records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in tasks.generate(
      tasks.ArithmeticTask(ops=("add", "sub"), max_digits=2), "train", args.examples)]
  rows, result = [], {"setup": vars(args)}
  for packing in (False, True):
    name = "packed" if packing else "padded"
    loader, batches = _loader_rate(records, packing, args.batch, args.max_length, args.batches)
    step = _step_rate(batches, max(args.repeats, 10))
    ratio = loader["batches_per_s"] / step["steps_per_s"]
    result[name] = {"loader": loader, "sft_step": step, "loader_over_step": ratio}
    rows.append([name, loader["examples_per_s"], loader["tokens_per_s"],
                 loader["batches_per_s"], step["steps_per_s"], ratio])
  print(_common.format_table(rows, ["layout", "examples/s", "tokens/s", "batches/s",
                                    "sft steps/s", "loader/step"]))
  _common.emit_json(result, args.json_path)
  return result
