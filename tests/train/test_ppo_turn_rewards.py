"""PPO on a multi-turn rollout: each turn's environment reward sits at the
turn's last model token, the rest of the row's reward at its last model
token, and GAE runs over the model's tokens only (observations skipped)."""

import numpy as np
import jax.numpy as jnp

from rankjax import losses, train
from rankjax.config import PPOCfg

# Row 0: model tokens 0-2 (turn 1 ends at 2), observation 3-4, model 5-6,
# pad 7. Row 1: one turn, model tokens 0-3.
MODEL = np.array([[1, 1, 1, 0, 0, 1, 1, 0],
                  [1, 1, 1, 1, 0, 0, 0, 0]], bool)
COMPLETION = np.array([[1, 1, 1, 1, 1, 1, 1, 0],
                       [1, 1, 1, 1, 0, 0, 0, 0]], bool)


def _rollout(total, turn_rewards):
  r, c = MODEL.shape
  return train.Rollout(
      prompt=np.zeros((r, 2), np.int32), prompt_mask=np.ones((r, 2), bool),
      completion=np.ones((r, c), np.int32), completion_mask=COMPLETION, model_mask=MODEL,
      logprobs=np.full((r, c), -1.0, np.float32), finished=np.ones(r, bool),
      rewards=np.asarray(total, np.float32)[:, None], total=np.asarray(total, np.float32),
      valid=np.ones(r, bool), turns=np.array([1, 0], np.int32),
      env_errors=np.zeros(r, np.int32), turn_rewards=np.asarray(turn_rewards, np.float32))


def test_turn_rewards_sit_at_their_turns_and_sum_to_the_total():
  turn = np.zeros((2, 8), np.float32)
  turn[0, 2] = 0.5                        # the calculator... or any env: turn 1's reward
  # total = 2 * env (0.5) + correct (1.0) for row 0; row 1: correct only.
  ro = _rollout([2.0, 1.0], turn)
  logp = np.asarray(ro.logprobs)
  ref = logp - np.where(MODEL, 0.1, 7.0).astype(np.float32)  # KL 0.1 per model token
  got = np.asarray(train.turn_token_rewards(ro, jnp.asarray(ref), jnp.asarray(MODEL), 0.2,
                                            hp=PPOCfg(), env_weight=2.0))
  want = np.where(MODEL, -0.2 * 0.1, 0.0)
  want[0, 2] += 2.0 * 0.5
  want[0, 6] += 2.0 - 2.0 * 0.5
  want[1, 3] += 1.0
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(got.sum(1), [2.0 - 5 * 0.02, 1.0 - 4 * 0.02], atol=1e-6)


def _gae_over_model_tokens(rewards, values, mask, gamma, lam):
  """Longhand: the recursion over each row's masked positions in order."""
  adv = np.zeros_like(rewards, np.float64)
  for b in range(rewards.shape[0]):
    idx = np.flatnonzero(mask[b])
    next_adv, next_v = 0.0, 0.0
    for t in idx[::-1]:
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      next_adv = delta + gamma * lam * next_adv
      adv[b, t], next_v = next_adv, values[b, t]
  return adv, np.where(mask, adv + values, 0.0)


def test_gae_skips_observations():
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=MODEL.shape).astype(np.float32)
  values = rng.normal(size=MODEL.shape).astype(np.float32)
  adv, ret = losses.gae(rewards, values, MODEL, gamma=0.9, lam=0.8)
  want_adv, want_ret = _gae_over_model_tokens(rewards, values, MODEL, 0.9, 0.8)
  np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-6)
  # Turn 1's last token bootstraps from the next turn's first token (5), not
  # from the observation after it (3).
  delta2 = rewards[0, 2] + 0.9 * values[0, 5] - values[0, 2]
  np.testing.assert_allclose(float(adv[0, 2]), delta2 + 0.72 * float(adv[0, 5]), rtol=1e-5)
