"""PPO with a value head as ONE jitted step: sample, score, GAE, update.

    state, critic, metrics = ppo_step(state, critic, batch, reward_states, kl_coef,
                                      hp=cfg.ppo, rollout=RolloutSettings(...),
                                      rewards=rewards)

`hp` is the `ppo` config section itself. The critic is a scalar-head model:
a separate one (`critic` a TrainState), or the policy's own trunk
(`critic=None`, the policy built with num_labels=1). One completion per
prompt comes from the shared `rollout` (G = 1). Per-token rewards are
−kl_coef·KL_t plus the score at the last token (minus a penalty without
EOS); in a multi-turn rollout each turn's environment reward sits at the
turn's last model token, and GAE(γ, λ) runs over the model's tokens only
(observations are skipped); GAE gives advantages and returns (`targets`); `num_epochs` ×
`num_minibatches` updates of `losses.ppo_loss` (clipped policy + clipped
value) run under `lax.scan` (`updates`). `kl_coef` is a traced input so the
adaptive controller (Ziegler et al.) can change it every step without
recompiling. Log-probs are taken at the sampling temperature (`_rollout`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from rankjax import losses, rewards as rewards_lib
from rankjax.config import PPOCfg
from rankjax.models import default_positions
from rankjax.train import _rollout
from rankjax.train._rollout import Rollout, RolloutSettings
from rankjax.train._state import TrainState
from rankjax.train._steps import apply_grads, head_logprobs


def _forward(model, tokens, attn, p, temperature: float):
  """(completion log-probs [R, N] at `temperature`, hidden states
  predicting them [R, N, D]); the LM head runs `model.config.logits_chunk`
  tokens at a time (`head_logprobs`)."""
  hidden = model.hidden_states(tokens, positions=default_positions(attn), attention_mask=attn)
  h = hidden[:, p - 1: -1]
  return head_logprobs(model, h, tokens[:, p:], temperature), h


def _values(policy, critic, tokens, attn, p, h_policy):
  """V_t for each completion position: the shared trunk's head, or the
  critic's own forward."""
  if critic is None:
    return policy.values(h_policy)
  hidden = critic.hidden_states(tokens, positions=default_positions(attn), attention_mask=attn)
  return critic.values(hidden[:, p - 1: -1])


def turn_token_rewards(ro: Rollout, ref_logp, loss_mask, kl_coef, *, hp: PPOCfg,
                       env_weight: float = 0.0):
  """Per-token rewards [R, C]: −kl_coef·KL_t on the model's tokens, each
  turn's environment reward (times `env_weight`, the "env" reward's weight)
  at the turn's last model token, and the rest of the row's total at its
  last model token. They sum to the row's total minus the KL penalty."""
  per_turn = env_weight * ro.turn_rewards
  final = jnp.where(ro.valid, ro.total - jnp.sum(per_turn, axis=1), 0.0)
  return losses.ppo_token_rewards(
      final, ro.logprobs, ref_logp, loss_mask, kl_coef=kl_coef,
      kl_estimator=hp.kl_estimator, has_eos_b=ro.finished,
      missing_eos_penalty=hp.missing_eos_penalty) + jnp.where(loss_mask, per_turn, 0.0)


def targets(state: TrainState, critic: TrainState | None, ro: Rollout, kl_coef, *,
            hp: PPOCfg, temperature: float, env_weight: float = 0.0):
  """The update data: tokens, masks, π_old, whitened GAE advantages, returns
  and V_old; plus the reference log-probs (for the KL metric). `env_weight`:
  the "env" reward's weight, whose per-turn parts move from the last token
  to the turns that earned them."""
  p = ro.prompt.shape[1]
  loss_mask = ro.model_mask & ro.valid[:, None]
  tokens = jnp.concatenate([ro.prompt, ro.completion], axis=1)
  attn = jnp.concatenate([ro.prompt_mask, ro.completion_mask], axis=1)
  policy = state.model()
  _, h = _forward(policy, tokens, attn, p, temperature)
  old_values = jax.lax.stop_gradient(
      _values(policy, None if critic is None else critic.model(), tokens, attn, p, h))
  ref_logp = jax.lax.stop_gradient(_forward(state.ref_model(), tokens, attn, p, temperature)[0])
  token_rewards = turn_token_rewards(ro, ref_logp, loss_mask, kl_coef, hp=hp,
                                     env_weight=env_weight)
  if hp.whiten_rewards:
    token_rewards = losses.whiten(token_rewards, loss_mask, shift_mean=False)
  adv, returns = losses.gae(token_rewards, old_values, loss_mask, gamma=hp.gamma, lam=hp.lam)
  data = dict(tokens=tokens, attn=attn, mask=loss_mask, model_mask=ro.model_mask, old=ro.logprobs,
              adv=losses.whiten(adv, loss_mask), returns=returns, old_values=old_values)
  return data, ref_logp


def updates(state: TrainState, critic: TrainState | None, data: Mapping[str, jax.Array],
            order, *, hp: PPOCfg, prompt_len: int, temperature: float):
  """One `losses.ppo_loss` update of the policy (and critic) per row of
  `order` under `lax.scan`. Returns ((state, critic), per-update metrics)."""
  p = prompt_len

  def loss_fn(pol_params, crit_params, mb):
    pol = state.model(pol_params)
    logp, h = _forward(pol, mb["tokens"], mb["attn"], p, temperature)
    crit = None if critic is None else critic.model(crit_params)
    values = _values(pol, crit, mb["tokens"], mb["attn"], p, h)
    loss, metrics = losses.ppo_loss(logp, mb["old"], mb["adv"], values, mb["old_values"],
                                    mb["returns"], mb["mask"], clip=hp.clip,
                                    value_clip=hp.value_clip, vf_coef=hp.vf_coef)
    mismatch = losses.masked_mean(jnp.abs(jax.lax.stop_gradient(logp) - mb["old"]),
                                  mb["model_mask"])
    return loss, dict(metrics, logprob_mismatch=mismatch)

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

  return jax.lax.scan(update, (state, critic), order)


def ppo_step(state: TrainState, critic: TrainState | None, batch: Mapping[str, jax.Array],
             reward_states: Sequence, kl_coef, *, hp: PPOCfg, rollout: RolloutSettings,
             rewards: Sequence[rewards_lib.Reward]):
  rows = batch["prompt_tokens"].shape[0]
  if rows % hp.num_minibatches:
    raise ValueError(f"ppo.num_minibatches={hp.num_minibatches} must divide the batch ({rows})")
  rng_sample, rng_perm = jax.random.split(jax.random.wrap_key_data(state.rng))
  t = rollout.temperature
  ro = _rollout.rollout(state.model(), batch, rewards, reward_states, rng_sample,
                        settings=rollout, group_size=1)
  env_weight = sum(r.weight for r in rewards if r.name == "env")
  data, ref_logp = targets(state, critic, ro, kl_coef, hp=hp, temperature=t,
                           env_weight=env_weight)
  m = hp.num_minibatches
  order = jnp.stack([jax.random.permutation(k, rows) for k in
                     jax.random.split(rng_perm, hp.num_epochs)]).reshape(hp.num_epochs * m, rows // m)
  (state, critic), upd = updates(state, critic, data, order, hp=hp,
                                 prompt_len=ro.prompt.shape[1], temperature=t)
  kl = losses.masked_mean(losses.kl_k1(ro.logprobs, ref_logp), data["mask"])
  next_coef = kl_coef
  if hp.adaptive_kl_target > 0:
    next_coef = losses.adaptive_kl_coef(kl_coef, kl, target=hp.adaptive_kl_target,
                                        horizon=hp.adaptive_kl_horizon, n_steps=rows)
  metrics = {k: jnp.mean(v) for k, v in upd.items()}
  metrics.update(_rollout.metrics(ro, rewards, rollout.env))
  metrics.update({
      "nonfinite": jnp.max(upd["nonfinite"]),
      "logprob_mismatch": upd["logprob_mismatch"][0],
      "kl": kl, "kl_coef": jnp.asarray(kl_coef, jnp.float32), "kl_coef_next": next_coef,
  })
  return state, critic, metrics
