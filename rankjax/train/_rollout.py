"""One rollout for every online algorithm: sample G completions per prompt
and score them, inside the compiled step.

    ro = rollout(model, batch, rewards, reward_states, rng,
                 settings=RolloutSettings(cfg.sample, eos_ids, pad_id), group_size=8)

GRPO (G ≥ 2), PPO (G = 1) and `bench grpo` all call it. Log-probs are
taken at the sampling temperature T, unfiltered (log-softmax(logits / T)):
the sampler records them as π_old and the trainer computes π the same way
(`completion_logps(..., temperature=T)`), so sampling at T ≠ 1 stays
on-policy, as in TRL. Top-k, top-p and min-p shape which tokens are drawn
but do not enter either log-prob (TRL's semantics too).

With an environment (`RolloutSettings.env`) a row is a multi-turn
transcript: the model's turns and the environment's observations in one
completion buffer. `Rollout.model_mask` marks the model's own tokens: only
they get policy loss, KL and entropy; observations are context.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from rankjax import envs, losses, rewards as rewards_lib, sampling
from rankjax.config import SampleCfg


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """How rollouts sample: the run's `sample` config section itself (one
  place declares the sampling knobs; evaluation reads the same), plus the
  tokenizer's EOS and pad ids, and the multi-turn environment (None = one
  turn). Static and hashable: bound before jit."""
  sample: SampleCfg = SampleCfg()
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0
  env: envs.Environment | None = None

  @property
  def temperature(self) -> float:
    """The trainer's log-prob temperature: the sampling one (1 if greedy)."""
    return self.sample.temperature if self.sample.temperature > 0 else 1.0

  def row_params(self, rows: int) -> sampling.RowParams:
    s = self.sample
    return sampling.SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                   top_k=s.top_k, top_p=s.top_p,
                                   min_p=s.min_p).row_params(rows)


@struct.dataclass
class Rollout:
  """A batch of sampled, scored completions (a pytree). R = B·G rows; row r
  continues prompt r // G.

  prompt / prompt_mask:          [B, P] left-padded prompts
  completion / completion_mask:  [R, C] completion tokens (mask: real tokens,
                                 the EOS included; pad after the end)
  model_mask: [R, C] the tokens the model wrote (the completion mask less
             environment observations): what the losses train on
  logprobs:  f32[R, C] the sampler's log-probs of its tokens at temperature T
  finished:  bool[R] the completion ended with an EOS (not truncated)
  rewards:   f32[R, K] one column per reward (NaN: does not apply)
  total:     f32[R] their weighted sum; valid: bool[R] some reward applies
  turns, env_errors: i32[R]; turn_rewards: f32[R, C] the environment's
             reward of each turn at its last model token
  """
  prompt: jax.Array
  prompt_mask: jax.Array
  completion: jax.Array
  completion_mask: jax.Array
  model_mask: jax.Array
  logprobs: jax.Array
  finished: jax.Array
  rewards: jax.Array
  total: jax.Array
  valid: jax.Array
  turns: jax.Array
  env_errors: jax.Array
  turn_rewards: jax.Array

  @property
  def group_size(self) -> int:
    return self.completion.shape[0] // self.prompt.shape[0]

  @property
  def lengths(self) -> jax.Array:
    return jnp.sum(self.completion_mask, axis=-1)


_PROMPT_KEYS = ("prompt_tokens", "prompt_mask")


def sample(model, batch: Mapping[str, jax.Array], rng, *, settings: RolloutSettings,
           group_size: int) -> sampling.SampleOutput:
  """G completions per prompt of `batch` (`prompt_tokens` / `prompt_mask`
  [B, P]); no gradient flows through sampling."""
  prompt, pmask = batch["prompt_tokens"], batch["prompt_mask"].astype(bool)
  rows = prompt.shape[0] * group_size
  extras = {k: v for k, v in batch.items() if k not in _PROMPT_KEYS}
  return jax.lax.stop_gradient(sampling.sample_loop(
      model, prompt, pmask, settings.row_params(rows), rng, num_samples=group_size,
      max_new_tokens=settings.sample.max_new_tokens, eos_ids=settings.eos_ids,
      pad_id=settings.pad_id, env=settings.env, extras=extras))


def score(batch: Mapping[str, jax.Array], out: sampling.SampleOutput,
          rewards: Sequence[rewards_lib.Reward], reward_states: Sequence, *,
          weights: Sequence[float] = ()) -> Rollout:
  """Score sampled completions in-graph; the batch's other per-prompt
  arrays (`answer_ids`, `example_index`, ...) reach the rewards as extras."""
  prompt, pmask = batch["prompt_tokens"], batch["prompt_mask"].astype(bool)
  g = out.tokens.shape[0] // prompt.shape[0]
  extras = {k: jnp.repeat(v, g, axis=0) for k, v in batch.items() if k not in _PROMPT_KEYS}
  extras["env_reward"] = out.env_reward
  inputs = rewards_lib.RewardInputs(
      prompt_tokens=jnp.repeat(prompt, g, axis=0), prompt_mask=jnp.repeat(pmask, g, axis=0),
      completion_tokens=out.tokens, completion_mask=out.mask, finished=out.finished,
      extras=extras)
  per_reward = rewards_lib.score(rewards, inputs, reward_states)
  total, valid = rewards_lib.combine(per_reward, tuple(weights) or
                                     tuple(r.weight for r in rewards))
  return Rollout(prompt=prompt, prompt_mask=pmask, completion=out.tokens,
                 completion_mask=out.mask, model_mask=out.mask & out.generated,
                 logprobs=out.logprobs, finished=out.finished, rewards=per_reward, total=total,
                 valid=valid, turns=out.turns, env_errors=out.env_errors,
                 turn_rewards=out.turn_rewards)


def rollout(model, batch: Mapping[str, jax.Array], rewards: Sequence[rewards_lib.Reward],
            reward_states: Sequence, rng, *, settings: RolloutSettings, group_size: int,
            weights: Sequence[float] = ()) -> Rollout:
  """`sample` then `score`: the rollout of one online step."""
  out = sample(model, batch, rng, settings=settings, group_size=group_size)
  return score(batch, out, rewards, reward_states, weights=weights)


def ranking_metrics(ro: Rollout) -> dict[str, jax.Array]:
  """Does the policy's own ranking agree with the reward's? Per group,
  Kendall τ and NDCG between the samples' length-normalised log-likelihood
  (the sampler's, at temperature T) and their rewards, and the reward rank
  of the policy's most likely sample (`losses.group_ranking_metrics`). With
  one sample per prompt (PPO) the batch is ranked as one list."""
  lengths = jnp.maximum(jnp.sum(ro.model_mask, axis=-1), 1).astype(jnp.float32)
  loglik = losses.sequence_logprobs(ro.logprobs, ro.model_mask) / lengths
  g = ro.group_size if ro.group_size > 1 else ro.total.shape[0]
  return losses.group_ranking_metrics(loglik.reshape(-1, g), ro.total.reshape(-1, g),
                                      ro.valid.reshape(-1, g))


def metrics(ro: Rollout, rewards: Sequence[rewards_lib.Reward],
            env: envs.Environment | None = None) -> dict[str, jax.Array]:
  """What every online step logs about its rollout (its ranking telemetry
  included; with an environment, its turns and errors)."""
  valid = ro.valid
  mean = lambda x: jnp.mean(x.astype(jnp.float32))
  out = {
      "reward": jnp.sum(jnp.where(valid, ro.total, 0.0)) / jnp.maximum(jnp.sum(valid), 1),
      "reward_applicable": mean(valid),
      # The model's own tokens (an environment's observations not counted).
      "completion_length": mean(jnp.sum(ro.model_mask, axis=-1)),
      "truncated_fraction": 1.0 - mean(ro.finished),
  }
  if env is not None:
    out.update({"env/turns": mean(ro.turns), "env/turn_rate": mean(ro.turns > 0),
                "env/errors": mean(ro.env_errors),
                "env/error_rate": jnp.sum(ro.env_errors) / jnp.maximum(jnp.sum(ro.turns), 1),
                "transcript_length": mean(ro.lengths)})
  for i, r in enumerate(rewards):
    col = ro.rewards[:, i]
    ok = ~jnp.isnan(col)
    out[f"rewards/{r.name}"] = jnp.sum(jnp.where(ok, col, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
  out.update(ranking_metrics(ro))
  return out


def logprob_mismatch(trainer_logp, ro: Rollout) -> jax.Array:
  """Mean |sampler log-prob − trainer log-prob| over the sampled tokens:
  ~1e-6 in float32 when both see the same policy at the same temperature."""
  return losses.masked_mean(jnp.abs(trainer_logp - ro.logprobs), ro.model_mask)
