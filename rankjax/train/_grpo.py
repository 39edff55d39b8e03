"""GRPO (and RLOO / REINFORCE++) as ONE jitted step: sample, score, update.

    state, metrics = grpo_step(state, batch, reward_states, settings=..., rewards=...)

Inside one compiled program:
  1. sample G completions per prompt (`sampling.sample_loop`: each prompt is
     prefilled once and its KV cache broadcast to its G samples);
  2. score them with the rewards (traceable verifiers and reward models run
     in-graph; host rewards go through `jax.pure_callback`);
  3. group advantages (`scale_rewards` group | batch | none), RLOO or
     REINFORCE++; groups with zero reward variance are counted and optionally
     masked out (DAPO's dynamic sampling without changing shapes);
  4. μ = `num_iterations` passes of `num_minibatches` clipped-surrogate
     updates under `lax.scan`, with the sampling-time log-probs as π_old and,
     when β > 0, a k3 KL to the reference (β = 0: no reference forward).

The sampler's π_old is the raw model's log-softmax (temperature 1), and so
is π here: sample at temperature 1 (the default) for an on-policy ratio.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from rankjax import losses, rewards as rewards_lib, sampling
from rankjax.train._state import TrainState
from rankjax.train._steps import RolloutSettings, apply_grads, token_logps


@dataclasses.dataclass(frozen=True)
class GRPOSettings(RolloutSettings):
  """Static settings of the step (hashable: bound before jit)."""
  group_size: int = 8
  num_iterations: int = 1
  num_minibatches: int = 1
  beta: float = 0.0
  eps_low: float = 0.2
  eps_high: float = 0.2
  advantage: str = "grpo"          # grpo | rloo | reinforce_pp
  scale_rewards: str = "group"     # group | batch | none
  std_eps: float = 1e-4
  ratio_level: str = "token"
  aggregation: str = "dapo"
  mask_zero_std_groups: bool = False
  mask_truncated: bool = False
  reward_weights: tuple[float, ...] = ()


def check_settings(s: GRPOSettings, batch_size: int) -> None:
  """Raises ValueError before anything compiles."""
  if s.group_size < 2:
    raise ValueError(f"GRPO needs group_size >= 2 (a group baseline), got {s.group_size}")
  if batch_size % s.num_minibatches:
    raise ValueError(f"num_minibatches={s.num_minibatches} must divide the {batch_size} "
                     f"prompts B (a minibatch holds whole groups)")
  if s.advantage not in ("grpo", "rloo", "reinforce_pp"):
    raise ValueError(f"advantage {s.advantage!r}: one of grpo, rloo, reinforce_pp")


def advantages(rewards_r, valid_r, s: GRPOSettings):
  """Advantages f32[R] and the zero-variance-group mask bool[R]."""
  g = s.group_size
  r = jnp.where(valid_r, rewards_r, 0.0)
  grouped = r.reshape(-1, g)
  zero_std = jnp.repeat(jnp.all(grouped == grouped[:, :1], axis=1), g)
  if s.advantage == "rloo":
    adv = losses.rloo_advantages(r, g)
  elif s.advantage == "reinforce_pp":
    adv = losses.reinforce_pp_advantages(r, g)
  else:
    adv = losses.group_advantages(r, g, scale=s.scale_rewards, eps=s.std_eps)
  return adv, zero_std


def completion_logps(model, prompt_bp, prompt_mask_bp, completion_rn, completion_mask_rn):
  """log π of each completion token: [R, N] (float32).

  Prompts are left-padded (their last slot holds the token that predicts the
  first completion token). Each prompt runs once for its group of G = R / B
  completions (`grouped_hidden_states`): the layers see B·P + R·(N − 1)
  positions, not R·(P + N − 1).
  """
  g = completion_rn.shape[0] // prompt_bp.shape[0]
  # The completion's last token predicts nothing that is scored.
  prompt_h, comp_h = model.grouped_hidden_states(prompt_bp, prompt_mask_bp, completion_rn[:, :-1],
                                                 completion_mask_rn[:, :-1])
  # The prompt's last position predicts the first completion token.
  hidden = jnp.concatenate([jnp.repeat(prompt_h[:, -1:], g, axis=0), comp_h], axis=1)
  return token_logps(model.logits(hidden), completion_rn)


def minibatch_order(rng, num_prompts: int, s: GRPOSettings):
  """i32[μ·m, B/m]: the prompts of each minibatch, a fresh permutation per
  pass. Minibatches hold whole groups, so each prompt runs once per
  minibatch for all its G completions."""
  perms = jnp.stack([jax.random.permutation(k, num_prompts)
                     for k in jax.random.split(rng, s.num_iterations)])
  return perms.reshape(s.num_iterations * s.num_minibatches, num_prompts // s.num_minibatches)


# The `policy_updates` data indexed by prompt; every other key is per row.
_PER_PROMPT = ("prompt", "prompt_mask")


def policy_updates(state: TrainState, data: Mapping[str, jax.Array], order, *,
                   settings: GRPOSettings, skip=False):
  """Step 4: one clipped-surrogate update per row of `order` under `lax.scan`.

  data: `prompt`, `prompt_mask` [B, P]; `completion`, `completion_mask`
  (attention), `loss_mask`, `old` [R, N]; `adv` [R]; `ref` [R, N] when β > 0.
  Returns (state, per-update metrics).
  """
  s, g = settings, settings.group_size
  # DAPO normalises by the active tokens of the whole batch; each of the m
  # minibatches carries 1/m of it.
  active = jnp.maximum(jnp.sum(data["loss_mask"]), 1) / s.num_minibatches

  def loss_fn(params, mb):
    logp = completion_logps(state.model(params), mb["prompt"], mb["prompt_mask"],
                            mb["completion"], mb["completion_mask"])
    return losses.policy_gradient_loss(
        logp, mb["old"], mb["adv"], mb["loss_mask"], eps_low=s.eps_low, eps_high=s.eps_high,
        ratio_level=s.ratio_level, aggregation=s.aggregation,
        max_completion_length=s.max_new_tokens, num_active_tokens_global=active,
        ref_logp_bt=mb.get("ref"), beta=s.beta)

  def update(st, prompts):
    rows = (prompts[:, None] * g + jnp.arange(g)).reshape(-1)
    mb = {k: v[prompts] if k in _PER_PROMPT else v[rows] for k, v in data.items()}
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(st.params, mb)
    return apply_grads(st, loss, metrics, grads, skip=skip)

  return jax.lax.scan(update, state, order)


def grpo_step(state: TrainState, batch: Mapping[str, jax.Array], reward_states: Sequence,
              *, settings: GRPOSettings, rewards: Sequence[rewards_lib.Reward]):
  """One GRPO iteration. batch: `prompt_tokens` / `prompt_mask` [B, P]
  (left-padded) plus per-prompt extras [B, ...] handed to the rewards."""
  s = settings
  prompt, pmask = batch["prompt_tokens"], batch["prompt_mask"].astype(bool)
  b = prompt.shape[0]
  check_settings(s, b)
  g, rows = s.group_size, b * s.group_size
  rng_sample, rng_perm = jax.random.split(jax.random.wrap_key_data(state.rng))

  # 1. Sample (no gradient flows through sampling).
  out = sampling.sample_loop(state.model(), prompt, pmask, s.row_params(rows), rng_sample,
                             num_samples=g, max_new_tokens=s.max_new_tokens,
                             eos_ids=s.eos_ids, pad_id=s.pad_id)
  out = jax.lax.stop_gradient(out)
  comp_mask = out.mask

  # 2. Score in-graph.
  extras = {k: jnp.repeat(v, g, axis=0) for k, v in batch.items()
            if k not in ("prompt_tokens", "prompt_mask")}
  prompt_r, pmask_r = jnp.repeat(prompt, g, axis=0), jnp.repeat(pmask, g, axis=0)
  inputs = rewards_lib.RewardInputs(prompt_tokens=prompt_r, prompt_mask=pmask_r,
                                    completion_tokens=out.tokens, completion_mask=comp_mask,
                                    finished=out.finished, extras=extras)
  per_reward = rewards_lib.score(rewards, inputs, reward_states)
  weights = s.reward_weights or tuple(r.weight for r in rewards)
  total, valid = rewards_lib.combine(per_reward, weights)

  # 3. Advantages. A truncated completion keeps its reward in its group's
  # statistics (as TRL's mask_truncated_completions); only its loss is masked.
  adv, zero_std = advantages(total, valid, s)
  if s.mask_truncated:
    valid = valid & out.finished
  if s.mask_zero_std_groups:
    valid = valid & ~zero_std
  data = dict(prompt=prompt, prompt_mask=pmask, completion=out.tokens,
              completion_mask=comp_mask, loss_mask=comp_mask & valid[:, None],
              old=out.logprobs, adv=adv)
  if s.beta:
    data["ref"] = jax.lax.stop_gradient(completion_logps(
        state.ref_model(), prompt, pmask, out.tokens, comp_mask))

  # 4. μ passes of minibatch updates, on device. No sample any reward
  # applies to: skip them (params and optimizer state untouched; reported
  # as `skipped_no_reward`, not as non-finite).
  any_valid = jnp.any(valid)
  new_state, update_metrics = policy_updates(state, data, minibatch_order(rng_perm, b, s),
                                             settings=s, skip=~any_valid)
  lengths = out.lengths.astype(jnp.float32)
  metrics = {k: jnp.mean(v) for k, v in update_metrics.items()}
  metrics.update({
      "nonfinite": jnp.max(update_metrics["nonfinite"]),
      "reward": jnp.sum(jnp.where(valid, total, 0.0)) / jnp.maximum(jnp.sum(valid), 1),
      "reward_applicable": jnp.mean(valid.astype(jnp.float32)),
      "zero_std_group_fraction": jnp.mean(zero_std.astype(jnp.float32)),
      "completion_length": jnp.mean(lengths),
      "truncated_fraction": 1.0 - jnp.mean(out.finished.astype(jnp.float32)),
      "advantage_abs_mean": jnp.mean(jnp.abs(adv)),
      "skipped_no_reward": 1.0 - any_valid.astype(jnp.float32),
  })
  for i, r in enumerate(rewards):
    col = per_reward[:, i]
    ok = ~jnp.isnan(col)
    metrics[f"rewards/{r.name}"] = jnp.sum(jnp.where(ok, col, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
  return new_state, metrics
