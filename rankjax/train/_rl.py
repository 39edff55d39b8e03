"""Pipeline stages "grpo" and "ppo" (`rankjax.run` lists them).

Prompts come from the run's task in a fixed, seeded order (`PromptBatches`,
whose position checkpoints with the state). Rewards come from
`cfg.grpo.rewards` / `cfg.ppo.rewards`: built-in names and TRL-style
functions from Python files (`rewards.from_names`).

Under LoRA (`model.lora_rank` > 0, the stage in `model.lora_stages` or
those empty) the policy trains its adapters only (plus a shared-trunk
value head), samples with them inside the compiled step, and its reference
is the base (adapters zeroed, no second copy); `run.model` and the export
get the adapters merged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import envs, models, parallel, rewards as rewards_lib
from rankjax.data import tasks as tasks_lib
from rankjax.errors import UserInputError
from rankjax.train._grpo import grpo_step, needs_reference
from rankjax.train._stages import resume_and_train, with_lora
from rankjax.train._optim import make_optimizer, make_schedule
from rankjax.train._ppo import ppo_step
from rankjax.train._rollout import RolloutSettings
from rankjax.train._state import batch_sharding, create_train_state

if TYPE_CHECKING:
  from rankjax.run import Run

log = logging.getLogger("rankjax.train")


class PromptBatches:
  """Batches of left-padded prompts, in a seeded order.

  Each batch: prompt_tokens / prompt_mask [B, P] and example_index [B] (the
  record each row came from: host rewards look their columns up by it);
  with `answers`, also answer_ids / answer_mask [B, A] (the records'
  reference answers for an in-graph verifier). `encode(record)` gives a
  record's prompt ids (default: BOS + its text, `tasks.encode_prompt`).
  `get_state`/`set_state` make resumption exact.
  """

  def __init__(self, records, tokenizer, batch_size: int, prompt_len: int, *, seed: int,
               encode=None, answers: bool = True, answer_len: int = 24):
    if not records:
      raise UserInputError("no prompts to train on")
    if len(records) < batch_size:
      raise UserInputError(f"{len(records)} prompts cannot fill one batch of {batch_size}")
    self.records, self.tok, self.b = records, tokenizer, batch_size
    self.prompt_len, self.answer_len, self.seed = prompt_len, answer_len, seed
    self.position, self.answers = 0, answers
    encode = encode or (lambda r: tasks_lib.encode_prompt(tokenizer, r["prompt"]))
    self.prompts = [self._checked(encode(r), i) for i, r in enumerate(records)]

  def _checked(self, ids: list[int], i: int) -> list[int]:
    if len(ids) > self.prompt_len:
      raise UserInputError(f"prompt {i} has {len(ids)} tokens > data.max_prompt_length "
                           f"{self.prompt_len}")
    return ids

  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    n = len(self.records)
    per_epoch = n // self.b
    epoch, k = divmod(self.position, per_epoch)
    idx = self._order(epoch)[k * self.b:(k + 1) * self.b]
    self.position += 1
    tokens = np.full((self.b, self.prompt_len), self.tok.pad_id, np.int32)
    mask = np.zeros((self.b, self.prompt_len), bool)
    for row, i in enumerate(idx):
      ids = self.prompts[i]
      tokens[row, self.prompt_len - len(ids):] = ids
      mask[row, self.prompt_len - len(ids):] = True
    batch = {"prompt_tokens": tokens, "prompt_mask": mask,
             "example_index": np.asarray(idx, np.int32)}
    if self.answers:
      batch["answer_ids"], batch["answer_mask"] = _encode_answers(
          [self.records[i]["answer"] for i in idx], self.tok, self.answer_len)
    return batch

  def get_state(self) -> dict:
    return {"position": self.position}

  def set_state(self, state: dict) -> None:
    self.position = int(state["position"])


def _encode_answers(answers, tok, length):
  """Reference answers as token ids for in-graph verifiers (any answer text,
  unlike `tasks.encode_answers`, which only takes integers)."""
  ids = np.zeros((len(answers), length), np.int32)
  mask = np.zeros((len(answers), length), bool)
  for i, a in enumerate(answers):
    enc = tok.encode(str(a))
    if len(enc) > length:
      raise UserInputError(f"reference answer {str(a)[:40]!r} has {len(enc)} tokens > {length}")
    ids[i, :len(enc)], mask[i, :len(enc)] = enc, True
  return ids, mask


def run_rewards(run: Run, names, weights, records) -> list[rewards_lib.Reward]:
  """`names` as rewards over `records` (see `rewards.from_names`)."""
  return rewards_lib.from_names(names, weights, task=run.task, tokenizer=run.tokenizer,
                                records=records, reward_model=run.reward_model)


def _prompt_batches(run: Run, batch_size: int, names):
  """(prompt batches, the run's environment over the same records): a tool
  environment's schemas are rendered into the prompts."""
  task, tok = run.task, run.tokenizer
  records = task.records("train")
  if not records:
    raise UserInputError(f"task {task.name!r} has no training prompts")
  env = envs.from_config(run.cfg.env, tok, records)
  tools = getattr(env, "tools_schema", None)
  # In-graph "correct" reads reference answers from the batch.
  answers = "correct" in names and task.graph_verifier(tok) is not None
  batches = PromptBatches(records, tok, batch_size, run.cfg.data.max_prompt_length,
                          seed=run.cfg.seed, encode=lambda r: task.prompt_ids(r, tok, tools),
                          answers=answers)
  return batches, env


def _loop(run, stage, state, step, batches, steps, mesh, optim, updates_per_step):
  """The shared host loop; the logged learning rate follows the optimizer,
  which takes `updates_per_step` updates per RL step."""
  total = steps * updates_per_step
  return resume_and_train(run, stage, state, step, batches, steps, batch_sharding(mesh),
                          schedule=lambda i: make_schedule(optim, total)(i * updates_per_step),
                          shown=("reward", "ranking/kendall_tau"))


def _stage_optim(cfg, learning_rate: float):
  """cfg.optim with the stage's own learning rate (0 = keep optim's)."""
  return dataclasses.replace(cfg.optim, learning_rate=learning_rate or cfg.optim.learning_rate)


def rollout_settings(cfg, tok, env=None) -> RolloutSettings:
  """How rollouts sample: the `sample` section, the tokenizer's ids and the
  run's multi-turn environment (None: one turn)."""
  return RolloutSettings(cfg.sample, tuple(tok.eos_ids), tok.pad_id, env)


def jit_rl_step(step_fn, state_sh, batch_sh, reward_states, *extra_sh, **static):
  """Jit an RL step once: explicit shardings, donated state, reward states
  (e.g. a reward model's parameters) as traced, replicated arguments."""
  mesh = jax.tree.leaves(batch_sh)[0].mesh
  rep = NamedSharding(mesh, P())
  rs_sh = jax.tree.map(lambda _: rep, reward_states)
  # out_shardings pin the returned state to the input layout: the next call
  # then hits the same compiled program.
  return jax.jit(functools.partial(step_fn, **static),
                 in_shardings=(state_sh, *extra_sh, batch_sh, rs_sh),
                 out_shardings=(state_sh, *extra_sh, rep),
                 donate_argnums=0)


def _trainable_summary(cfg, state, critic=None) -> dict:
  """`lora_rank` and `trainable_params`, as `fit` reports them (a separate
  critic's parameters count too)."""
  n = sum(x.size for s in (state, critic) if s is not None for x in jax.tree.leaves(s.params))
  return {"lora_rank": int(state.lora) * cfg.model.lora_rank, "trainable_params": n}


def _finish(run: Run, stage: str, state, summary: dict) -> None:
  """The trained policy (adapters merged, a shared value head dropped)
  becomes `run.model` and is exported."""
  run.model = _without_value_head(models.merge_lora(state.model()))
  run.summary[stage] = summary
  if exported := run.export(run.model, run.workdir / "export"):
    summary["export"] = exported


def stage_grpo(run: Run) -> None:
  """GRPO on the current policy (usually after SFT)."""
  cfg, tok = run.cfg, run.tokenizer
  mesh = parallel.make_mesh(cfg.mesh)
  batches, env = _prompt_batches(run, cfg.grpo.num_prompts, cfg.grpo.rewards)
  rewards = run_rewards(run, cfg.grpo.rewards, cfg.grpo.reward_weights, batches.records)
  reward_states = [r.state for r in rewards]
  optim = _stage_optim(cfg, cfg.grpo.learning_rate)
  tx = make_optimizer(optim, cfg.grpo.steps * cfg.grpo.num_iterations * cfg.grpo.num_minibatches)
  state, state_sh = create_train_state(with_lora(run.model, cfg, "grpo"), tx, mesh,
                                       seed=cfg.seed, with_reference=needs_reference(cfg.grpo))
  batch_sh = batch_sharding(mesh)
  jitted = jit_rl_step(grpo_step, state_sh, batch_sh, reward_states, hp=cfg.grpo,
                       rollout=rollout_settings(cfg, tok, env),
                       rewards=tuple(rewards))
  step = lambda st, batch: jitted(st, batch, reward_states)
  start = time.time()
  state, summary = _loop(run, "grpo", state, step, batches, cfg.grpo.steps, mesh, optim,
                         cfg.grpo.num_iterations * cfg.grpo.num_minibatches)
  summary.update(seconds=round(time.time() - start, 1), **_trainable_summary(cfg, state))
  _finish(run, "grpo", state, summary)


def stage_ppo(run: Run) -> None:
  """PPO with a value head: a shared trunk (`ppo.shared_critic`) or a
  separate critic initialised from the policy (fully trained; LoRA applies
  to the policy)."""
  cfg, tok = run.cfg, run.tokenizer
  p = cfg.ppo
  mesh = parallel.make_mesh(cfg.mesh)
  batches, env = _prompt_batches(run, p.num_prompts, p.rewards)
  rewards = run_rewards(run, p.rewards, (), batches.records)
  reward_states = [r.state for r in rewards]
  updates = p.steps * p.num_epochs * p.num_minibatches
  optim = _stage_optim(cfg, p.learning_rate)
  tx = make_optimizer(optim, updates)
  policy = _with_value_head(run.model, cfg.seed + 3) if p.shared_critic else run.model
  # Adapters after the head: `_with_value_head` builds a new model and
  # would not carry them over.
  policy = with_lora(policy, cfg, "ppo")
  state, state_sh = create_train_state(policy, tx, mesh, seed=cfg.seed, with_reference=True,
                                       trainable=_policy_trainable(policy, p.shared_critic))
  critic = critic_sh = None
  if not p.shared_critic:
    from rankjax.train._stages import reward_model_from
    critic, critic_sh = create_train_state(reward_model_from(run.model, cfg.seed + 3),
                                           make_optimizer(optim, updates), mesh,
                                           seed=cfg.seed + 1)
  settings = rollout_settings(cfg, tok, env)
  batch_sh = batch_sharding(mesh)
  rep = NamedSharding(mesh, P())

  def ppo_fn(st, crit, batch, rstates, coef):
    return ppo_step(st, crit, batch, rstates, coef, hp=p, rollout=settings,
                    rewards=tuple(rewards))

  jitted = jax.jit(ppo_fn, in_shardings=(state_sh, critic_sh, batch_sh,
                                         jax.tree.map(lambda _: rep, reward_states), rep),
                   # Pinned output layouts: every step reuses one compiled program.
                   out_shardings=(state_sh, critic_sh, rep), donate_argnums=(0, 1))

  def step(ppo_state, batch):
    st, crit, coef = ppo_state
    st, crit, metrics = jitted(st, crit, batch, reward_states, coef)
    return (st, crit, metrics["kl_coef_next"]), metrics

  # Policy, critic (None with a shared trunk) and the adaptive KL coefficient
  # are one pytree, so checkpoints and resumption carry all three.
  coef = jax.device_put(jnp.float32(p.kl_coef), rep)
  (state, critic, _), summary = _loop(run, "ppo", (state, critic, coef), step, batches,
                                      p.steps, mesh, optim, p.num_epochs * p.num_minibatches)
  summary.update(_trainable_summary(cfg, state, critic))
  _finish(run, "ppo", state, summary)


def _policy_trainable(policy: models.Transformer, shared_critic: bool):
  """What the PPO policy's optimizer updates: the default (every parameter,
  or the adapters under LoRA), plus under LoRA a shared trunk's value head,
  which would otherwise never learn."""
  if not (shared_critic and models.lora_targets(policy)):
    return None
  return nnx.Any(nnx.LoRAParam, nnx.PathContains("score"))


def _with_value_head(model: models.Transformer, seed: int) -> models.Transformer:
  """The policy with a fresh scalar head on its trunk (shared-trunk critic)."""
  if model.config.num_labels == 1:
    return model
  new = models.create(model.config.replace(num_labels=1), seed=seed)
  state = nnx.state(new, nnx.Param)
  pure, old = nnx.to_pure_dict(state), nnx.to_pure_dict(nnx.state(model, nnx.Param))
  pure.update({k: v for k, v in old.items() if k != "score"})
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(new, state)
  return new


def _without_value_head(model: models.Transformer) -> models.Transformer:
  """The policy as a plain causal LM: a Hugging Face causal LM has no
  scalar head, so an export with one would not load back."""
  if not (model.config.lm_head and model.config.num_labels):
    return model
  graphdef, state = nnx.split(models.create_abstract(model.config.replace(num_labels=0)))
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  del pure["score"]
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)
