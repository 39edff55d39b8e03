"""Pipeline stage "hypernet" (`rankjax.run` lists it): train a hypernetwork
over the arithmetic family, measure it on held-out descriptions, route, export.

  1. base      with `hypernet.base_steps` > 0, SFT of `run.model` on every
               variant's demonstrations (train and held-out variants, no
               descriptions: the base learns the arithmetic in every format,
               and cannot know which format a prompt wants); `run.model`
               becomes this base. 0: `run.model` is the base as it is.
  2. train     the hypernetwork over the training variants (base frozen).
  3. measure   pass@1 (greedy, each variant's verifier, the same held-out
               problems for every arm) on each held-out variant, of
                 base        the frozen base;
                 multitask   one LoRA (rank, alpha, targets, steps, batch and
                             learning rate of the hypernetwork) SFT-trained on
                             the training variants' mixture, no conditioning;
                 hypernet    the adapter generated from the held-out
                             variant's description, zero-shot;
                 oracle      a LoRA trained on the held-out variant's own rows;
               gap closed = (hypernet − multitask) / (oracle − multitask)
               on the mean over held-out variants.
  4. route     a router over every variant's description routes a reworded
               description of each held-out variant and answers its problems
               with the entry's pipeline.
  5. export    each held-out variant's generated adapter merged into the base,
               as HF weights: <workdir>/export/hypernet_<variant>/ (and the
               trained base: <workdir>/export/hypernet_base/); the network:
               <workdir>/hypernet/ (`Hypernet.load`).

run.summary["hypernet"] holds the table, per-variant pass@1, routing and
paths. `run.model` is left as the base (the adapters are per task).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import numpy as np
from flax import nnx

from rankjax import inference, models, parallel, train
from rankjax.hypernet import _tasks
from rankjax.hypernet._network import Hypernet, HyperNetwork, describe, lora_view, one_hot_inputs
from rankjax.hypernet._router import Entry, Router
from rankjax.hypernet._train import (TaskBatches, batch_shardings, create_state,
                                     jit_hypernet_step, tokenize_rows)

if TYPE_CHECKING:
  from rankjax.run import Run

ARMS = ("base", "multitask", "hypernet", "oracle")
_EVAL_SEED = 7919


def _family(run: Run):
  """(training variants, held-out variants, {name: task})."""
  hp = run.cfg.hypernet
  train_vs = [_tasks.parse_variant(n, "hypernet.train_variants") for n in hp.train_variants]
  held_vs = [_tasks.parse_variant(n, "hypernet.heldout_variants") for n in hp.heldout_variants]
  family = {v.name: _tasks.make_task(v, seed=run.cfg.seed, num_train=hp.num_train,
                                     num_eval=hp.num_eval) for v in (*train_vs, *held_vs)}
  return train_vs, held_vs, family


def _with_cfg(run: Run, **sections) -> Run:
  """`run` with config sections replaced (the LoRA baselines and the base
  train through `train.fit`, which reads `run.cfg`)."""
  return dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, **sections))


def _mixture(rows_by_task: list[list[dict]], seed: int) -> list[dict]:
  rows = [r for rows in rows_by_task for r in rows]
  order = np.random.default_rng([seed, 3]).permutation(len(rows))
  return [rows[i] for i in order]


def _train_base(run: Run, family, key: str) -> models.Transformer:
  cfg = run.cfg
  rows = _mixture([_tasks.sft_rows(t) for t in family.values()], cfg.seed)
  base_run = _with_cfg(run, model=dataclasses.replace(cfg.model, lora_rank=0),
                       sft=dataclasses.replace(cfg.sft, loss_mask="completion"))
  model, summary = train.fit(base_run, "sft", run.model, cfg.hypernet.base_steps,
                             records=rows, name=f"{key}_base")
  print(f"{key}: base SFT on {len(rows)} rows of {len(family)} variants: "
        f"loss {summary.get('loss', float('nan')):.4f}")
  return model


def _lora_run(run: Run) -> Run:
  """The LoRA baselines' config: the hypernetwork's rank, alpha, targets,
  batch (T·b rows), learning rate and steps, LoRA in the sft stage."""
  cfg, hp = run.cfg, run.cfg.hypernet
  return _with_cfg(
      run,
      model=dataclasses.replace(cfg.model, lora_rank=hp.rank, lora_alpha=hp.alpha,
                                lora_targets=hp.targets, lora_stages=()),
      data=dataclasses.replace(cfg.data, batch_size=hp.tasks_per_step * hp.rows_per_task),
      optim=dataclasses.replace(cfg.optim, learning_rate=hp.learning_rate),
      sft=dataclasses.replace(cfg.sft, steps=hp.steps, loss_mask="completion",
                              unlikelihood_alpha=0.0))


def train_hypernet(run: Run, base: models.Transformer, train_vs, family,
                   key: str) -> tuple[Hypernet, dict]:
  """Trains the hypernetwork over the training variants; (Hypernet, summary)."""
  cfg, hp = run.cfg, run.cfg.hypernet
  wordings = [tuple(_tasks.descriptions(v)) for v in train_vs]
  if hp.embedding == "mean_hidden":
    inputs = [describe(base, run.tokenizer, w) for w in wordings]
  else:
    inputs = [one_hot_inputs(len(train_vs), k)[None] for k in range(len(train_vs))]
  view = lora_view(base, hp.rank, hp.alpha, hp.targets, seed=cfg.seed + 1)
  net = HyperNetwork(view, np.concatenate(inputs), hidden=hp.hidden,
                     rngs=nnx.Rngs(params=cfg.seed + 2))
  mesh = parallel.make_mesh(cfg.mesh)
  optim = dataclasses.replace(cfg.optim, learning_rate=hp.learning_rate)
  tx = train.make_optimizer(optim, hp.steps)
  state, state_sh = create_state(view, net, tx, mesh, seed=cfg.seed)
  examples = [tokenize_rows(_tasks.sft_rows(family[v.name]), run.tokenizer, cfg.data.max_length)
              for v in train_vs]
  batches = TaskBatches(examples, inputs, tasks_per_step=hp.tasks_per_step,
                        rows_per_task=hp.rows_per_task, max_length=cfg.data.max_length,
                        pad_id=run.tokenizer.pad_id, seed=cfg.seed)
  writer = train.MetricsWriter(run.workdir, key)
  try:
    state, summary = train.train_loop(
        state, jit_hypernet_step(state_sh, mesh), batches,
        train.LoopConfig(name=key, steps=hp.steps, log_every=cfg.log_every,
                         on_nonfinite=cfg.on_nonfinite),
        batch_shardings=batch_shardings(mesh), writer=writer,
        schedule=train.make_schedule(optim, hp.steps), stop_requested=run.stop_requested)
  finally:
    writer.close()
  trained = state.model()
  summary["trainable_params"] = sum(x.size for x in jax.tree.leaves(state.params))
  return Hypernet(base=base, view=trained.base, net=trained.net, tokenizer=run.tokenizer,
                  embedding=hp.embedding, train_descriptions=tuple(wordings)), summary


def pass_at_1(model: models.Transformer, tokenizer, task, n: int, max_new_tokens: int,
              seed: int) -> float:
  """Greedy pass@1 on the task's first `n` held-out problems."""
  samples = inference.collect(model, tokenizer, task.eval_records(n), k=1, temperature=0.0,
                              rng=jax.random.key(seed), task=task, greedy=False,
                              max_new_tokens=max_new_tokens)
  return float(np.mean(samples.correct))


def _arms(run: Run, hn: Hypernet, train_vs, held_vs, family, key: str) -> dict[str, dict]:
  """{arm: {variant: pass@1}} on the held-out variants."""
  cfg, hp = run.cfg, run.cfg.hypernet
  score = lambda model, v: pass_at_1(model, run.tokenizer, family[v.name], hp.num_eval,
                                     cfg.sample.max_new_tokens, cfg.seed + _EVAL_SEED)
  table = {arm: {} for arm in ARMS}
  for v in held_vs:
    table["base"][v.name] = score(hn.base, v)
    table["hypernet"][v.name] = score(hn.model(_tasks.description(v)), v)
  if not hp.baselines:
    return {k: t for k, t in table.items() if t}
  lora_run = _lora_run(run)
  mixed = _mixture([_tasks.sft_rows(family[v.name]) for v in train_vs], cfg.seed)
  multitask, _ = train.fit(lora_run, "sft", hn.base, hp.steps, records=mixed,
                           name=f"{key}_multitask")
  for v in held_vs:
    table["multitask"][v.name] = score(multitask, v)
    oracle, _ = train.fit(lora_run, "sft", hn.base, hp.steps,
                          records=_tasks.sft_rows(family[v.name]), name=f"{key}_oracle_{v.name}")
    table["oracle"][v.name] = score(oracle, v)
  return table


def registry(family: dict, n: int) -> list[Entry]:
  """The built-in registry: every variant under its canonical description;
  one-digit variants answer greedily, two-digit bare ones by best-of-n
  against the verifier, chain-of-thought ones by majority vote."""
  entries = []
  for name, task in family.items():
    v = _tasks.parse_variant(name)
    pipeline = "vote" if v.cot else "greedy" if v.digits == 1 else "best_of_n"
    entries.append(Entry(name=name, description=_tasks.description(v), pipeline=pipeline,
                         task=task, n=1 if pipeline == "greedy" else n))
  return entries


def _route(run: Run, hn: Hypernet, held_vs, family) -> dict:
  cfg, hp = run.cfg, run.cfg.hypernet
  router = Router(hn, registry(family, cfg.eval.num_samples),
                  max_new_tokens=cfg.sample.max_new_tokens, temperature=cfg.eval.temperature)
  out = {}
  for v in held_vs:
    wording = _tasks.descriptions(v)[-1]
    routed = router.route(wording)
    problems = family[v.name].eval_records(hp.num_eval)
    texts = routed.answer(problems, rng=jax.random.key(cfg.seed + _EVAL_SEED))
    correct = [family[v.name].verify(t, p) for t, p in zip(texts, problems)]
    out[v.name] = {"description": wording, "routed_to": routed.entry.name,
                   "pipeline": routed.entry.pipeline, "similarity": routed.similarity,
                   "accuracy": float(np.mean(correct))}
  return out


def _mean(values: dict) -> float:
  return float(np.mean(list(values.values())))


def format_table(table: dict[str, dict], held: list[str]) -> str:
  cols = [*held, "mean"]
  lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for arm, scores in table.items():
    cells = [f"{scores[v]:.3f}" for v in held] + [f"{_mean(scores):.3f}"]
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def gap_closed(table: dict[str, dict]) -> float | None:
  """(hypernet − multitask) / (oracle − multitask) of the held-out means."""
  if not {"multitask", "oracle"} <= set(table):
    return None
  b, c, d = (_mean(table[a]) for a in ("multitask", "hypernet", "oracle"))
  return (c - b) / (d - b) if d != b else None


def stage_hypernet(run: Run) -> None:
  """Text-to-LoRA over the arithmetic family; see the module docstring."""
  cfg = run.cfg
  key = run.stage_key or "hypernet"
  train_vs, held_vs, family = _family(run)
  summary: dict = {}
  if cfg.hypernet.base_steps:
    run.model = _train_base(run, family, key)
    if exported := run.export(run.model, run.workdir / "export" / "hypernet_base"):
      summary["export_base"] = exported
  hn, summary["train"] = train_hypernet(run, run.model, train_vs, family, key)
  summary["saved"] = str(hn.save(run.workdir / "hypernet"))
  table = _arms(run, hn, train_vs, held_vs, family, key)
  held = [v.name for v in held_vs]
  summary.update(table=table, mean={arm: _mean(s) for arm, s in table.items()},
                 gap_closed=gap_closed(table), heldout=held,
                 train_variants=[v.name for v in train_vs], embedding=cfg.hypernet.embedding)
  print(f"{key}: pass@1 (greedy) on held-out variants, {cfg.hypernet.num_eval} problems each:")
  print(format_table(table, held))
  if summary["gap_closed"] is not None:
    print(f"gap closed (hypernet - multitask) / (oracle - multitask): "
          f"{summary['gap_closed']:.3f}")
  summary["routing"] = _route(run, hn, held_vs, family)
  for name, r in summary["routing"].items():
    print(f"route {name}: {r['description']!r} -> {r['routed_to']} ({r['pipeline']}, "
          f"cos {r['similarity']:.3f}): accuracy {r['accuracy']:.3f}")
  exports = {}
  for v in held_vs:
    path = run.workdir / "export" / f"hypernet_{v.name}"
    if exported := run.export(hn.model(_tasks.description(v)), path):
      exports[v.name] = exported
  summary["export"] = exports
  run.summary[key] = summary
