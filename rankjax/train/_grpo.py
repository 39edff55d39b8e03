"""GRPO (and RLOO / REINFORCE++) as ONE jitted step: sample, score, update.

    state, metrics = grpo_step(state, batch, reward_states, hp=cfg.grpo,
                               rollout=RolloutSettings(cfg.sample, eos_ids, pad_id),
                               rewards=rewards)

`hp` is the `grpo` config section itself. Inside one compiled program:
  1. `rollout`: G completions per prompt (`sampling.sample_loop`: each
     prompt is prefilled once and its KV cache broadcast to its G samples),
     scored by the rewards (traceable verifiers and reward models in-graph;
     host rewards through `jax.pure_callback`);
  2. group advantages (`scale_rewards` group | batch | none), RLOO or
     REINFORCE++; groups with zero reward variance are counted and optionally
     masked out (DAPO's dynamic sampling without changing shapes);
  3. μ = `num_iterations` passes of `num_minibatches` updates under
     `lax.scan` of the `objective`: the clipped surrogate
     (`losses.grpo_loss`, the sampler's log-probs as π_old and, when β > 0,
     a k3 KL to the reference) and/or listwise losses
     (`losses.listwise_loss`): each group ranked by reward, the loss on the
     implicit rewards β_list·(log π(y) − log π_ref(y)) of its sequences.
     The reference runs only when β > 0 or a listwise term needs it.

π_old and π are both log-softmax(logits / T) at the sampling temperature T
(see `_rollout`), and `logprob_mismatch` reports how far apart they are on
the first minibatch, before any update.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from rankjax import losses, rewards as rewards_lib
from rankjax.config import GRPOCfg
from rankjax.train import _rollout
from rankjax.train._rollout import RolloutSettings
from rankjax.train._state import TrainState
from rankjax.train._steps import apply_grads, head_logprobs


def advantages(rewards_r, valid_r, hp: GRPOCfg):
  """Advantages f32[R] and the zero-variance-group mask bool[R]."""
  g = hp.group_size
  r = jnp.where(valid_r, rewards_r, 0.0)
  grouped = r.reshape(-1, g)
  zero_std = jnp.repeat(jnp.all(grouped == grouped[:, :1], axis=1), g)
  if hp.advantage == "rloo":
    adv = losses.rloo_advantages(r, g)
  elif hp.advantage == "reinforce_pp":
    adv = losses.reinforce_pp_advantages(r, g)
  else:
    adv = losses.group_advantages(r, g, scale=hp.scale_rewards, eps=hp.std_eps)
  return adv, zero_std


def completion_logps(model, prompt_bp, prompt_mask_bp, completion_rn, completion_mask_rn,
                     temperature: float = 1.0):
  """log π of each completion token at `temperature`: [R, N] (float32).

  Prompts are left-padded (their last slot holds the token that predicts the
  first completion token). Each prompt runs once for its group of G = R / B
  completions (`grouped_hidden_states`): the layers see B·P + R·(N − 1)
  positions, not R·(P + N − 1). The LM head runs `model.config.logits_chunk`
  tokens at a time (`head_logprobs`): no [R, N, V] logits.
  """
  g = completion_rn.shape[0] // prompt_bp.shape[0]
  # The completion's last token predicts nothing that is scored.
  prompt_h, comp_h = model.grouped_hidden_states(prompt_bp, prompt_mask_bp, completion_rn[:, :-1],
                                                 completion_mask_rn[:, :-1])
  # The prompt's last position predicts the first completion token.
  hidden = jnp.concatenate([jnp.repeat(prompt_h[:, -1:], g, axis=0), comp_h], axis=1)
  return head_logprobs(model, hidden, completion_rn, temperature)


def needs_reference(hp: GRPOCfg) -> bool:
  """Whether the step runs the reference model: a KL penalty (β > 0) or a
  listwise objective (its implicit rewards are log-ratios to π_ref)."""
  return hp.beta > 0 or any(o != "clipped" for o in hp.objective)


def objective_loss(logp, mb, *, hp: GRPOCfg, max_new_tokens: int, active):
  """The update's loss and metrics: Σ_k w_k · objective_k over `hp.objective`
  (the clipped surrogate and/or listwise losses on whole groups)."""
  weights = dict(zip(hp.objective, hp.objective_weights or (1.0,) * len(hp.objective)))
  loss, metrics = jnp.zeros((), jnp.float32), {}
  if "clipped" in weights:
    clipped, metrics = losses.grpo_loss(
        logp, mb["old"], mb["adv"], mb["loss_mask"], eps_low=hp.eps_low, eps_high=hp.eps_high,
        ratio_level=hp.ratio_level, aggregation=hp.aggregation,
        max_completion_length=max_new_tokens, num_active_tokens_global=active,
        ref_logp_bt=mb.get("ref"), beta=hp.beta)
    metrics = dict(metrics, **{"loss/clipped": clipped})
    loss = loss + weights["clipped"] * clipped
  listwise = [o for o in hp.objective if o != "clipped"]
  if listwise:
    g = hp.group_size
    seq = lambda x: losses.sequence_logprobs(x, mb["model_mask"]).reshape(-1, g)
    term, lw = losses.listwise_loss(
        seq(logp), seq(mb["ref"]), mb["reward"].reshape(-1, g), mb["list_mask"].reshape(-1, g),
        beta=hp.listwise_beta, loss_type=listwise, loss_weights=[weights[o] for o in listwise],
        target_temperature=hp.listwise_target_temperature)
    metrics.update({f"listwise/{k}": v for k, v in lw.items() if k != "loss"})
    loss = loss + term
  return loss, metrics


def minibatch_order(rng, num_prompts: int, hp: GRPOCfg):
  """i32[μ·m, B/m]: the prompts of each minibatch, a fresh permutation per
  pass. Minibatches hold whole groups, so each prompt runs once per
  minibatch for all its G completions."""
  perms = jnp.stack([jax.random.permutation(k, num_prompts)
                     for k in jax.random.split(rng, hp.num_iterations)])
  return perms.reshape(hp.num_iterations * hp.num_minibatches, num_prompts // hp.num_minibatches)


# The `policy_updates` data indexed by prompt; every other key is per row.
_PER_PROMPT = ("prompt", "prompt_mask")


def policy_updates(state: TrainState, data: Mapping[str, jax.Array], order, *,
                   hp: GRPOCfg, max_new_tokens: int, temperature: float = 1.0, skip=False):
  """Step 3: one clipped-surrogate update per row of `order` under `lax.scan`.

  data: `prompt`, `prompt_mask` [B, P]; `completion`, `completion_mask`
  (attention), `model_mask` (the model's own tokens), `loss_mask`, `old` [R, N]; `adv`, `reward` and `list_mask`
  (the rows the loss may use) [R]; `ref` [R, N] with `needs_reference`.
  Returns (state, per-update metrics, with `logprob_mismatch`: mean
  |π − π_old| on the update's minibatch before it is applied).
  """
  g = hp.group_size
  # DAPO normalises by the active tokens of the whole batch; each of the m
  # minibatches carries 1/m of it.
  active = jnp.maximum(jnp.sum(data["loss_mask"]), 1) / hp.num_minibatches

  def loss_fn(params, mb):
    logp = completion_logps(state.model(params), mb["prompt"], mb["prompt_mask"],
                            mb["completion"], mb["completion_mask"], temperature)
    loss, metrics = objective_loss(logp, mb, hp=hp, max_new_tokens=max_new_tokens,
                                   active=active)
    mismatch = losses.masked_mean(jnp.abs(jax.lax.stop_gradient(logp) - mb["old"]),
                                  mb["model_mask"])
    return loss, dict(metrics, logprob_mismatch=mismatch)

  def update(st, prompts):
    rows = (prompts[:, None] * g + jnp.arange(g)).reshape(-1)
    mb = {k: v[prompts] if k in _PER_PROMPT else v[rows] for k, v in data.items()}
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(st.params, mb)
    return apply_grads(st, loss, metrics, grads, skip=skip)

  return jax.lax.scan(update, state, order)


def grpo_step(state: TrainState, batch: Mapping[str, jax.Array], reward_states: Sequence,
              *, hp: GRPOCfg, rollout: RolloutSettings,
              rewards: Sequence[rewards_lib.Reward]):
  """One GRPO iteration. batch: `prompt_tokens` / `prompt_mask` [B, P]
  (left-padded) plus per-prompt extras [B, ...] handed to the rewards."""
  b = batch["prompt_tokens"].shape[0]
  if b % hp.num_minibatches:
    raise ValueError(f"grpo.num_minibatches={hp.num_minibatches} must divide the {b} prompts "
                     "of a batch (a minibatch holds whole groups)")
  rng_sample, rng_perm = jax.random.split(jax.random.wrap_key_data(state.rng))
  t = rollout.temperature

  # 1. Sample and score (no gradient flows through sampling).
  ro = _rollout.rollout(state.model(), batch, rewards, reward_states, rng_sample,
                        settings=rollout, group_size=hp.group_size,
                        weights=hp.reward_weights)

  # 2. Advantages. A truncated completion keeps its reward in its group's
  # statistics (as TRL's mask_truncated_completions); only its loss is masked.
  adv, zero_std = advantages(ro.total, ro.valid, hp)
  valid = ro.valid
  if hp.mask_truncated:
    valid = valid & ro.finished
  if hp.mask_zero_std_groups:
    valid = valid & ~zero_std
  data = dict(prompt=ro.prompt, prompt_mask=ro.prompt_mask, completion=ro.completion,
              completion_mask=ro.completion_mask, model_mask=ro.model_mask,
              # Environment observations are context: no loss, KL or entropy.
              loss_mask=ro.model_mask & valid[:, None],
              old=ro.logprobs, adv=adv, reward=jnp.where(valid, ro.total, 0.0), list_mask=valid)
  if needs_reference(hp):
    data["ref"] = jax.lax.stop_gradient(completion_logps(
        state.ref_model(), ro.prompt, ro.prompt_mask, ro.completion, ro.completion_mask, t))

  # 3. μ passes of minibatch updates, on device. No sample any reward
  # applies to: skip them (params and optimizer state untouched; reported
  # as `skipped_no_reward`, not as non-finite).
  any_valid = jnp.any(valid)
  new_state, update_metrics = policy_updates(
      state, data, minibatch_order(rng_perm, b, hp), hp=hp,
      max_new_tokens=rollout.sample.max_new_tokens, temperature=t, skip=~any_valid)
  metrics = {k: jnp.mean(v) for k, v in update_metrics.items()}
  metrics.update(_rollout.metrics(ro, rewards, rollout.env))
  metrics.update({
      "nonfinite": jnp.max(update_metrics["nonfinite"]),
      # The first update's minibatch is scored before any parameter moves.
      "logprob_mismatch": update_metrics["logprob_mismatch"][0],
      "reward": jnp.sum(jnp.where(valid, ro.total, 0.0)) / jnp.maximum(jnp.sum(valid), 1),
      "reward_applicable": jnp.mean(valid.astype(jnp.float32)),
      "zero_std_group_fraction": jnp.mean(zero_std.astype(jnp.float32)),
      "advantage_abs_mean": jnp.mean(jnp.abs(adv)),
      "skipped_no_reward": 1.0 - any_valid.astype(jnp.float32),
  })
  return new_state, metrics
