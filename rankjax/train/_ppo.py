"""PPO with a value head as ONE jitted step: sample, score, GAE, update.

    state, critic, metrics = ppo_step(state, critic, batch, reward_states, kl_coef, ...)

The critic is a scalar-head model: a separate one (`critic` a TrainState),
or the policy's own trunk (`critic=None`, the policy built with
num_labels=1). Per-token rewards are −kl_coef·KL_t plus the score at the last
token (minus a penalty without EOS); GAE(γ, λ) gives advantages and returns;
`num_epochs` × `num_minibatches` clipped policy + clipped value updates run
under `lax.scan`. `kl_coef` is a traced input so the adaptive controller
(Ziegler et al.) can change it every step without recompiling.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from rankjax import losses, rewards as rewards_lib, sampling
from rankjax.models import default_positions
from rankjax.train._state import TrainState
from rankjax.train._steps import RolloutSettings, apply_grads


@dataclasses.dataclass(frozen=True)
class PPOSettings(RolloutSettings):
  num_epochs: int = 2
  num_minibatches: int = 2
  gamma: float = 1.0
  lam: float = 0.95
  clip: float = 0.2
  value_clip: float = 0.2
  vf_coef: float = 0.5
  kl_estimator: str = "k1"
  adaptive_kl_target: float = 0.0     # 0 = fixed coefficient
  adaptive_kl_horizon: int = 10000
  whiten_rewards: bool = False
  missing_eos_penalty: float = 0.0
  reward_weights: tuple[float, ...] = ()


def _forward(model, tokens, attn, p):
  """(completion log-probs [R, N], hidden states predicting them [R, N, D])."""
  hidden = model.hidden_states(tokens, positions=default_positions(attn), attention_mask=attn)
  h = hidden[:, p - 1: -1]
  return losses.token_logprobs(model.logits(h), tokens[:, p:]), h


def _values(policy, critic, tokens, attn, p, h_policy):
  """V_t for each completion position: the shared trunk's head, or the
  critic's own forward."""
  if critic is None:
    return policy.values(h_policy)
  hidden = critic.hidden_states(tokens, positions=default_positions(attn), attention_mask=attn)
  return critic.values(hidden[:, p - 1: -1])


def ppo_step(state: TrainState, critic: TrainState | None, batch: Mapping[str, jax.Array],
             reward_states: Sequence, kl_coef, *, settings: PPOSettings,
             rewards: Sequence[rewards_lib.Reward]):
  s = settings
  prompt, pmask = batch["prompt_tokens"], batch["prompt_mask"].astype(bool)
  rows, p = prompt.shape
  if rows % s.num_minibatches:
    raise ValueError(f"num_minibatches={s.num_minibatches} must divide the batch ({rows})")
  rng_sample, rng_perm = jax.random.split(jax.random.wrap_key_data(state.rng))
  params = s.row_params(rows)
  out = jax.lax.stop_gradient(sampling.sample_loop(
      state.model(), prompt, pmask, params, rng_sample, num_samples=1,
      max_new_tokens=s.max_new_tokens, eos_ids=s.eos_ids, pad_id=s.pad_id))
  mask = out.mask

  extras = {k: v for k, v in batch.items() if k not in ("prompt_tokens", "prompt_mask")}
  inputs = rewards_lib.RewardInputs(prompt_tokens=prompt, prompt_mask=pmask,
                                    completion_tokens=out.tokens, completion_mask=mask,
                                    finished=out.finished, extras=extras)
  per_reward = rewards_lib.score(rewards, inputs, reward_states)
  total, valid = rewards_lib.combine(per_reward, s.reward_weights or tuple(r.weight for r in rewards))
  scores = jnp.where(valid, total, 0.0)
  loss_mask = mask & valid[:, None]

  tokens = jnp.concatenate([prompt, out.tokens], axis=1)
  attn = jnp.concatenate([pmask, mask], axis=1)
  policy = state.model()
  _, h = _forward(policy, tokens, attn, p)
  old_values = jax.lax.stop_gradient(
      _values(policy, None if critic is None else critic.model(), tokens, attn, p, h))
  ref_logp = jax.lax.stop_gradient(_forward(state.ref_model(), tokens, attn, p)[0])
  token_rewards = losses.ppo_token_rewards(
      scores, out.logprobs, ref_logp, loss_mask, kl_coef=kl_coef, kl_estimator=s.kl_estimator,
      has_eos_b=out.finished, missing_eos_penalty=s.missing_eos_penalty)
  if s.whiten_rewards:
    token_rewards = losses.whiten(token_rewards, loss_mask, shift_mean=False)
  adv, returns = losses.gae(token_rewards, old_values, loss_mask, gamma=s.gamma, lam=s.lam)
  adv = losses.whiten(adv, loss_mask)

  data = dict(tokens=tokens, attn=attn, mask=loss_mask, old=out.logprobs, adv=adv,
              returns=returns, old_values=old_values)
  m = s.num_minibatches
  order = jnp.stack([jax.random.permutation(k, rows) for k in
                     jax.random.split(rng_perm, s.num_epochs)]).reshape(s.num_epochs * m, rows // m)

  def loss_fn(pol_params, crit_params, mb):
    pol = state.model(pol_params)
    logp, h = _forward(pol, mb["tokens"], mb["attn"], p)
    crit = None if critic is None else critic.model(crit_params)
    values = _values(pol, crit, mb["tokens"], mb["attn"], p, h)
    pg, pg_m = losses.ppo_policy_loss(logp, mb["old"], mb["adv"], mb["mask"], clip=s.clip)
    vf, vf_m = losses.ppo_value_loss(values, mb["old_values"], mb["returns"], mb["mask"],
                                     clip=s.value_clip)
    metrics = {**{f"policy/{k}": v for k, v in pg_m.items()},
               **{f"value/{k}": v for k, v in vf_m.items()}}
    return pg + s.vf_coef * vf, metrics

  def update(carry, idx):
    pol_state, crit_state = carry
    mb = jax.tree.map(lambda x: x[idx], data)
    crit_params = None if crit_state is None else crit_state.params
    (loss, metrics), (g_pol, g_crit) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        pol_state.params, crit_params, mb)
    pol_state, metrics = apply_grads(pol_state, loss, metrics, g_pol)
    if crit_state is not None:
      crit_state, _ = apply_grads(crit_state, loss, {}, g_crit)
    return (pol_state, crit_state), metrics

  (state, critic), upd = jax.lax.scan(update, (state, critic), order)
  kl = losses.masked_mean(losses.kl_k1(out.logprobs, ref_logp), loss_mask)
  next_coef = kl_coef
  if s.adaptive_kl_target > 0:
    next_coef = losses.adaptive_kl_coef(kl_coef, kl, target=s.adaptive_kl_target,
                                        horizon=s.adaptive_kl_horizon, n_steps=rows)
  metrics = {k: jnp.mean(v) for k, v in upd.items()}
  metrics.update({
      "nonfinite": jnp.max(upd["nonfinite"]),
      "reward": jnp.sum(scores) / jnp.maximum(jnp.sum(valid), 1),
      "kl": kl, "kl_coef": jnp.asarray(kl_coef, jnp.float32), "kl_coef_next": next_coef,
      "completion_length": jnp.mean(out.lengths.astype(jnp.float32)),
      "truncated_fraction": 1.0 - jnp.mean(out.finished.astype(jnp.float32)),
  })
  return state, critic, metrics
