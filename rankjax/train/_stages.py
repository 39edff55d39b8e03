"""Pipeline stages "sft", "rm", "dpo", "kto", "listwise" (`rankjax.run` lists them).

Each reads its config section and `cfg.data`, builds batches through
`rankjax.data` (see `_data` for the built-in tasks' preference pairs),
trains with its step from `_steps`, and leaves:

  <workdir>/metrics.jsonl, <workdir>/tensorboard/<stage>/   (the host loop)
  <workdir>/checkpoints/<stage>/                            (rankjax.checkpoint; resumes)
  <workdir>/export/          the trained policy (sft, dpo, kto, listwise), LoRA merged
  <workdir>/export/reward_model/   the trained reward model (rm)
  run.summary[stage]         final train and eval metrics

sft, dpo, kto and listwise replace `run.model` with the trained policy (LoRA merged
into a plain Transformer). rm leaves the policy alone and sets
`run.reward_model` (a scalar-head Transformer) for the stages that score
with it (eval/rerank, PPO).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import jax
from flax import nnx

from rankjax import checkpoint, models, parallel
from rankjax.train import _data, _reference, _steps
from rankjax.train._loop import (LoopConfig, MetricsWriter, evaluate_batches, jit_eval,
                                 jit_step, train_loop)
from rankjax.train._optim import make_optimizer, make_schedule
from rankjax.train._state import create_train_state, batch_sharding

if TYPE_CHECKING:
  from rankjax.run import Run

log = logging.getLogger("rankjax.train")


def with_lora(model: models.Transformer, cfg, stage: str) -> models.Transformer:
  """A LoRA view of `model` when `cfg.model.lora_rank` > 0 and `stage` is
  one of `lora_stages` (empty: all): new module objects over the same
  arrays, so the caller's model is left untouched."""
  m = cfg.model
  if not m.lora_rank or (m.lora_stages and stage not in m.lora_stages):
    return model
  view = nnx.merge(*nnx.split(model))
  return models.apply_lora(view, m.lora_rank, m.lora_alpha, m.lora_targets,
                           rngs=nnx.Rngs(params=cfg.seed + 1))


def reward_model_from(policy: models.Transformer, seed: int) -> models.Transformer:
  """A scalar-head model (no LM head) on the policy's backbone, with a fresh
  head: it exports as *ForSequenceClassification."""
  if policy.config.num_labels == 1 and not policy.config.lm_head:
    return policy
  rm = models.create(policy.config.replace(lm_head=False, num_labels=1), seed=seed)
  state = nnx.state(rm, nnx.Param)
  pure, backbone = nnx.to_pure_dict(state), nnx.to_pure_dict(nnx.state(policy, nnx.Param))
  pure.update({k: backbone[k] for k in ("embed", "layers", "final_norm")})
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(rm, state)
  return rm


def _with_cached_reference(run, model, batch_sh, train_batches, eval_pipe):
  """`dpo.precompute_ref`: score every train/eval pair with the reference
  once, then serve the log-probs from the batches (see `_reference`)."""
  if jax.process_count() > 1:
    raise NotImplementedError("dpo.precompute_ref is single-process for now")
  cfg, tok = run.cfg, run.tokenizer
  score = _reference.reference_scorer(model, batch_sh)
  one_pass = _data.build_pipeline(cfg, run.task, "dpo", _steps.OFFLINE["dpo"].formats, tok,
                                  "train", one_pass=True)
  table = _reference.precompute(iter(one_pass), score, cfg.data.batch_size)
  if eval_pipe is not None:
    table.update(_reference.precompute(iter(eval_pipe), score, cfg.data.batch_size))
  log.info("dpo: precomputed reference log-probs of %d pairs", len(table))
  eval_batches = (lambda: _reference.WithReference(iter(eval_pipe), table)) if eval_pipe else None
  return _reference.WithReference(train_batches, table), eval_batches


def resume_and_train(run: Run, name: str, state, step, batches, steps: int,
                     batch_sh, *, schedule, eval_fn=None, eval_every: int = 0,
                     shown: tuple[str, ...] = ()):
  """Restore `name`'s latest checkpoint (state + data position), run the host
  loop to `steps` with metrics, checkpoints and SIGTERM handling, and wait
  for the last save. Shared by every training stage."""
  cfg = run.cfg
  ckpt = checkpoint.Manager(run.workdir / "checkpoints" / name, cfg.checkpoint)
  state, data_state, start = ckpt.restore_or(state, batches.get_state())
  if start:
    batches.set_state(data_state)
    print(f"{name}: resumed from step {start}")
  writer = MetricsWriter(run.workdir, name)
  loop_cfg = LoopConfig(name=name, steps=steps, log_every=cfg.log_every,
                        eval_every=eval_every, checkpoint_every=cfg.checkpoint.every,
                        on_nonfinite=cfg.on_nonfinite, shown=shown)
  try:
    state, summary = train_loop(state, step, batches, loop_cfg, batch_shardings=batch_sh,
                                writer=writer, eval_fn=eval_fn, checkpoints=ckpt,
                                schedule=schedule, start_step=start,
                                stop_requested=run.stop_requested)
    ckpt.wait()
  finally:
    writer.close()
  return state, summary


def fit(run: Run, stage: str, model: models.Transformer, steps: int, *,
        records: list[dict] | None = None, name: str | None = None):
  """Trains `model` for `steps` with the offline algorithm `stage`
  (`_steps.OFFLINE`; its hyper-parameters are `cfg.<stage>`); returns
  (trained model with LoRA merged, summary)."""
  cfg = run.cfg
  algo, hp = _steps.OFFLINE[stage], getattr(cfg, stage)
  mesh = parallel.make_mesh(cfg.mesh)
  _data.check_divisible(cfg, mesh)
  batch_sh = batch_sharding(mesh)
  batches = iter(_data.build_pipeline(cfg, run.task, stage, algo.formats, run.tokenizer,
                                      "train", records=records))
  eval_pipe = _data.build_pipeline(cfg, run.task, stage, algo.formats, run.tokenizer, "eval",
                                   records=records)
  eval_batches = (lambda: iter(eval_pipe)) if eval_pipe is not None else None
  reference = algo.reference(hp)
  if reference and getattr(hp, "precompute_ref", False):
    batches, eval_batches = _with_cached_reference(run, model, batch_sh, batches, eval_pipe)
    reference = False

  model = with_lora(model, cfg, stage)
  tx = make_optimizer(cfg.optim, steps)
  state, state_sh = create_train_state(model, tx, mesh, seed=cfg.seed,
                                       with_reference=reference)
  step = jit_step(algo.step, state_sh, batch_sh, hp=hp, accum_steps=cfg.optim.grad_accum_steps)
  eval_fn = None
  if eval_batches is not None:
    eval_step = jit_eval(_steps.eval_step, state_sh, batch_sh, objective=algo.objective, hp=hp)
    eval_fn = lambda s: evaluate_batches(eval_step, s, eval_batches(), batch_sh)

  name = name or stage  # e.g. "star_sft_1": its own checkpoints and metrics
  state, summary = resume_and_train(run, name, state, step, batches, steps, batch_sh,
                                    schedule=make_schedule(cfg.optim, steps),
                                    eval_fn=eval_fn, eval_every=cfg.eval_every,
                                    shown=algo.metrics)
  summary.update(data=batches.stats.as_dict(), lora_rank=int(state.lora) * cfg.model.lora_rank,
                 trainable_params=sum(x.size for x in jax.tree.leaves(state.params)))
  return models.merge_lora(state.model()), summary


def _train_policy(run: Run, stage: str, steps: int) -> None:
  # A repeated stage ("sft_2") trains under its own name: checkpoints, metrics, summary.
  key = run.stage_key or stage
  model, summary = fit(run, stage, run.model, steps, name=key)
  if exported := run.export(model, run.workdir / "export"):
    summary["export"] = exported
  run.model = model
  run.summary[key] = summary


def stage_sft(run: Run) -> None:
  """Supervised fine-tuning on prompt/completion (or lm) data."""
  _train_policy(run, "sft", run.cfg.sft.steps)


def stage_dpo(run: Run) -> None:
  """DPO (and variants, `dpo.loss_type`) on preference pairs."""
  _train_policy(run, "dpo", run.cfg.dpo.steps)


def stage_kto(run: Run) -> None:
  """KTO on unpaired (or unpaired preference) data."""
  _train_policy(run, "kto", run.cfg.kto.steps)


def stage_listwise(run: Run) -> None:
  """Listwise preference optimisation (`listwise.loss_type`) on ranked lists."""
  _train_policy(run, "listwise", run.cfg.listwise.steps)


def stage_rm(run: Run) -> None:
  """Train a Bradley-Terry reward model initialised from the policy."""
  rm = reward_model_from(run.model, seed=run.cfg.seed + 2)
  model, summary = fit(run, "rm", rm, run.cfg.rm.steps)
  if exported := run.export(model, run.workdir / "export" / "reward_model"):
    summary["export"] = exported
  run.reward_model = model
  run.summary["rm"] = summary
