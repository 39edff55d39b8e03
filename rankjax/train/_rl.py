"""Pipeline stages "grpo" and "ppo" (registered with `rankjax.run`).

Prompts come from the built-in task (or a GSM8K-format file) in a fixed,
seeded order (`PromptBatches`, whose position checkpoints with the state).
Rewards come from `cfg.grpo.rewards` / `cfg.ppo.rewards` by name:

  correct   the task's verifier (in-graph for arithmetic; a host Python
            verifier through pure_callback for GSM8K)
  format    the completion contains the task's answer marker
  eos       the completion ended with an EOS
  rm        the reward model trained by an earlier "rm" stage (in-graph)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import models, parallel, rewards as rewards_lib
from rankjax import run as run_lib
from rankjax.data import tasks
from rankjax.inference._prompts import encode_prompt
from rankjax.inference._stages import uses_chat
from rankjax.train import _data
from rankjax.train._grpo import GRPOSettings, check_settings, grpo_step
from rankjax.train._stages import resume_and_train
from rankjax.train._optim import make_optimizer, make_schedule
from rankjax.train._ppo import PPOSettings, ppo_step
from rankjax.train._state import batch_sharding, create_train_state

log = logging.getLogger("rankjax.train")


class PromptBatches:
  """Batches of left-padded prompts + reference answers, in a seeded order.

  Each batch: prompt_tokens / prompt_mask [B, P], answer_ids / answer_mask
  [B, A] (for the in-graph verifier) and example_index [B] (for host
  rewards' dataset columns). `get_state`/`set_state` make resumption exact.
  """

  def __init__(self, records, tokenizer, batch_size: int, prompt_len: int, *, seed: int,
               answer_len: int = 24, chat: bool = False):
    if not records:
      raise ValueError("no prompts to train on")
    if len(records) < batch_size:
      raise ValueError(f"{len(records)} prompts cannot fill one batch of {batch_size}")
    self.records, self.tok, self.b = records, tokenizer, batch_size
    self.prompt_len, self.answer_len, self.seed = prompt_len, answer_len, seed
    self.position, self.chat = 0, chat
    self.prompts = [self._encode(r["prompt"], i) for i, r in enumerate(records)]

  def _encode(self, text: str, i: int) -> list[int]:
    # BOS + text as the data layer encodes string prompts for SFT, or a
    # user turn through the chat template, as evaluation encodes them.
    ids = encode_prompt(self.tok, text, chat=self.chat)
    if len(ids) > self.prompt_len:
      raise ValueError(f"prompt {i} has {len(ids)} tokens > data.max_prompt_length "
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
    answers = [self.records[i]["answer"] for i in idx]
    a_ids, a_mask = _encode_answers(answers, self.tok, self.answer_len)
    return {"prompt_tokens": tokens, "prompt_mask": mask, "answer_ids": a_ids,
            "answer_mask": a_mask, "example_index": np.asarray(idx, np.int32)}

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
      raise ValueError(f"reference answer {str(a)[:40]!r} has {len(enc)} tokens > {length}")
    ids[i, :len(enc)], mask[i, :len(enc)] = enc, True
  return ids, mask


def build_rewards(run: run_lib.Run, names, weights) -> list[rewards_lib.Reward]:
  cfg, tok = run.cfg, run.tokenizer
  weights = weights or (1.0,) * len(names)
  out = []
  for name, w in zip(names, weights):
    if name == "correct":
      if cfg.data.source == "arithmetic":
        out.append(rewards_lib.arithmetic_correct(tok, cot=cfg.data.cot, weight=w))
      else:
        records, _ = _data._task_records(cfg, "train")
        out.append(rewards_lib.host_reward(
            lambda prompts, completions, answer: [tasks.verify_numeric(c, a)
                                                  for c, a in zip(completions, answer)],
            tok, columns={"answer": [r["answer"] for r in records]}, name="correct", weight=w))
    elif name == "format":
      marker = "answer:" if cfg.data.source == "arithmetic" else "####"
      out.append(rewards_lib.contains_reward(tok.encode(marker), weight=w))
    elif name == "eos":
      out.append(rewards_lib.eos_reward(weight=w))
    elif name == "rm":
      rm = run.reward_model
      if rm is None:
        raise ValueError("reward 'rm' needs a reward model: put an 'rm' stage before this one")
      out.append(rewards_lib.reward_model_score(rm, weight=w))
    else:
      raise ValueError(f"unknown reward {name!r}; one of correct, format, eos, rm")
  return out


def _prompt_batches(run: run_lib.Run, batch_size: int) -> PromptBatches:
  records, _ = _data._task_records(run.cfg, "train")
  return PromptBatches(records, run.tokenizer, batch_size, run.cfg.data.max_prompt_length,
                       seed=run.cfg.seed, chat=uses_chat(run.cfg))


def _loop(run, stage, state, step, batches, steps, mesh, optim, updates_per_step):
  """The shared host loop; the logged learning rate follows the optimizer,
  which takes `updates_per_step` updates per RL step."""
  total = steps * updates_per_step
  return resume_and_train(run, stage, state, step, batches, steps, batch_sharding(mesh),
                          schedule=lambda i: make_schedule(optim, total)(i * updates_per_step))


def _stage_optim(cfg, learning_rate: float):
  """cfg.optim with the stage's own learning rate (0 = keep optim's)."""
  return dataclasses.replace(cfg.optim, learning_rate=learning_rate or cfg.optim.learning_rate)


def grpo_settings(cfg, tok) -> GRPOSettings:
  g = cfg.grpo
  return GRPOSettings(
      **GRPOSettings.rollout_fields(cfg, tok), group_size=g.group_size,
      num_iterations=g.num_iterations, num_minibatches=g.num_minibatches,
      beta=g.beta, eps_low=g.eps_low, eps_high=g.eps_high, advantage=g.advantage,
      scale_rewards=g.scale_rewards, std_eps=g.std_eps, ratio_level=g.ratio_level,
      aggregation=g.aggregation, mask_zero_std_groups=g.mask_zero_std_groups,
      mask_truncated=g.mask_truncated, reward_weights=g.reward_weights)


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


def stage_grpo(run: run_lib.Run) -> None:
  """GRPO on the current policy (usually after SFT)."""
  cfg, tok = run.cfg, run.tokenizer
  mesh = parallel.make_mesh(cfg.mesh)
  settings = grpo_settings(cfg, tok)
  check_settings(settings, cfg.grpo.num_prompts)
  rewards = build_rewards(run, cfg.grpo.rewards, cfg.grpo.reward_weights)
  reward_states = [r.state for r in rewards]
  batches = _prompt_batches(run, cfg.grpo.num_prompts)
  optim = _stage_optim(cfg, cfg.grpo.learning_rate)
  tx = make_optimizer(optim, cfg.grpo.steps * cfg.grpo.num_iterations * cfg.grpo.num_minibatches)
  state, state_sh = create_train_state(run.model, tx, mesh, seed=cfg.seed,
                                       with_reference=cfg.grpo.beta > 0)
  batch_sh = batch_sharding(mesh)
  jitted = jit_rl_step(grpo_step, state_sh, batch_sh, reward_states,
                       settings=settings, rewards=tuple(rewards))
  step = lambda st, batch: jitted(st, batch, reward_states)
  start = time.time()
  state, summary = _loop(run, "grpo", state, step, batches, cfg.grpo.steps, mesh, optim,
                         cfg.grpo.num_iterations * cfg.grpo.num_minibatches)
  summary["seconds"] = round(time.time() - start, 1)
  run.model = state.model()
  run.summary["grpo"] = summary
  if exported := run.export(run.model, run.workdir / "export"):
    summary["export"] = exported


def stage_ppo(run: run_lib.Run) -> None:
  """PPO with a value head: a shared trunk (`ppo.shared_critic`) or a
  separate critic initialised from the policy."""
  cfg, tok = run.cfg, run.tokenizer
  p = cfg.ppo
  mesh = parallel.make_mesh(cfg.mesh)
  rewards = build_rewards(run, p.rewards, ())
  reward_states = [r.state for r in rewards]
  batches = _prompt_batches(run, p.num_prompts)
  updates = p.steps * p.num_epochs * p.num_minibatches
  optim = _stage_optim(cfg, p.learning_rate)
  tx = make_optimizer(optim, updates)
  policy = run.model
  if p.shared_critic:
    policy = _with_value_head(policy, cfg.seed + 3)
  state, state_sh = create_train_state(policy, tx, mesh, seed=cfg.seed, with_reference=True)
  critic = critic_sh = None
  if not p.shared_critic:
    from rankjax.train._stages import reward_model_from
    critic, critic_sh = create_train_state(reward_model_from(run.model, cfg.seed + 3),
                                           make_optimizer(optim, updates), mesh,
                                           seed=cfg.seed + 1)
  settings = PPOSettings(
      **PPOSettings.rollout_fields(cfg, tok), num_epochs=p.num_epochs,
      num_minibatches=p.num_minibatches, gamma=p.gamma, lam=p.lam, clip=p.clip,
      value_clip=p.value_clip, vf_coef=p.vf_coef, kl_estimator=p.kl_estimator,
      adaptive_kl_target=p.adaptive_kl_target, adaptive_kl_horizon=p.adaptive_kl_horizon,
      whiten_rewards=p.whiten_rewards, missing_eos_penalty=p.missing_eos_penalty)
  batch_sh = batch_sharding(mesh)
  rep = NamedSharding(mesh, P())

  def ppo_fn(st, crit, batch, rstates, coef):
    return ppo_step(st, crit, batch, rstates, coef, settings=settings, rewards=tuple(rewards))

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
  (state, _, _), summary = _loop(run, "ppo", (state, critic, coef), step, batches, p.steps,
                                 mesh, optim, p.num_epochs * p.num_minibatches)
  model = state.model()
  run.model = model
  run.summary["ppo"] = summary
  if exported := run.export(model, run.workdir / "export"):
    summary["export"] = exported


def _with_value_head(model: models.Transformer, seed: int) -> models.Transformer:
  """The policy with a fresh scalar head on its trunk (shared-trunk critic)."""
  if model.config.num_labels == 1:
    return model
  from flax import nnx
  new = models.create(model.config.replace(num_labels=1), seed=seed)
  state = nnx.state(new, nnx.Param)
  pure, old = nnx.to_pure_dict(state), nnx.to_pure_dict(nnx.state(model, nnx.Param))
  pure.update({k: v for k, v in old.items() if k != "score"})
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(new, state)
  return new


run_lib.register("grpo", stage_grpo)
run_lib.register("ppo", stage_ppo)
