"""Rewards: in-graph vs host agreement, combination, built-ins, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import losses, models, rewards, testing
from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()


def _inputs(completions, answers, *, prompts=None, finished=None, n=8):
  """RewardInputs from completion strings (EOS appended when finished)."""
  r = len(completions)
  prompts = prompts or ["1+2="] * r
  p = max(map(len, prompts))
  pt = np.zeros((r, p), np.int32)
  pm = np.zeros((r, p), bool)
  ct = np.zeros((r, n), np.int32)
  cm = np.zeros((r, n), bool)
  finished = [True] * r if finished is None else finished
  for i, (pr, c) in enumerate(zip(prompts, completions)):
    ids = TOK.encode(pr)
    pt[i, p - len(ids):], pm[i, p - len(ids):] = ids, True
    ids = (TOK.encode(c) + ([TOK.eos_id] if finished[i] else []))[:n]
    ct[i, :len(ids)], cm[i, :len(ids)] = ids, True
  a_ids, a_mask = tasks.encode_answers(answers, TOK, 8)
  return rewards.RewardInputs(
      prompt_tokens=jnp.asarray(pt), prompt_mask=jnp.asarray(pm), completion_tokens=jnp.asarray(ct),
      completion_mask=jnp.asarray(cm), finished=jnp.asarray(finished),
      extras={"answer_ids": jnp.asarray(a_ids), "answer_mask": jnp.asarray(a_mask),
              "example_index": jnp.arange(r, dtype=jnp.int32)})


def test_in_graph_verifier_equals_host_verifier_and_advantages():
  rng = np.random.RandomState(0)
  answers = [str(rng.randint(-99, 999)) for _ in range(32)]
  completions = [a if rng.rand() < 0.5 else a[:-1] + "7" if len(a) > 1 else "x" for a in answers]
  completions = [c + "\nextra" if rng.rand() < 0.2 else c for c in completions]
  x = _inputs(completions, answers, n=12)
  in_graph = rewards.arithmetic_correct(TOK)
  host = rewards.host_reward(
      lambda prompts, completions, answer: [tasks.verify(c, a) for c, a in zip(completions, answer)],
      TOK, columns={"answer": answers}, name="host_verify")
  scores = jax.jit(lambda x: rewards.score([in_graph, host], x))(x)
  np.testing.assert_array_equal(scores[:, 0], scores[:, 1])
  assert 0 < float(scores[:, 0].mean()) < 1
  adv_a = losses.group_advantages(scores[:, 0], 4)
  adv_b = losses.group_advantages(scores[:, 1], 4)
  chex.assert_trees_all_close(adv_a, adv_b)


def test_combine_skips_nan_and_marks_inapplicable():
  per = jnp.asarray([[1.0, jnp.nan], [jnp.nan, jnp.nan], [0.5, 2.0]])
  total, ok = rewards.combine(per, (1.0, 0.5))
  np.testing.assert_allclose(np.asarray(total)[[0, 2]], [1.0, 1.5])
  assert bool(jnp.isnan(total[1])) and ok.tolist() == [True, False, True]


def test_host_reward_none_means_not_applicable():
  x = _inputs(["3", "4"], ["3", "3"])
  r = rewards.host_reward(lambda prompts, completions: [None, 1.0], TOK, name="partial")
  out = np.asarray(rewards.score([r], x))[:, 0]
  assert np.isnan(out[0]) and out[1] == 1.0


@pytest.mark.parametrize("fn,match", [
    (lambda prompts, completions: [1.0], "reward 'bad' returned 1 values for 2 completions"),
    (lambda prompts, completions: 1 / 0, "reward 'bad' raised ZeroDivisionError"),
    (lambda prompts, completions: ["a", 1], "reward 'bad' returned a non-number"),
])
def test_host_reward_errors_name_the_reward(fn, match):
  x = _inputs(["3", "4"], ["3", "3"])
  r = rewards.host_reward(fn, TOK, name="bad")
  with pytest.raises(Exception, match=match):
    jax.block_until_ready(rewards.score([r], x))


def test_contains_eos_and_overlong():
  x = _inputs(["12 answer: 3", "answer 3", "answer: 1"], ["3"] * 3, finished=[True, False, True], n=14)
  tag = rewards.contains_reward(TOK.encode("answer:"))
  eos = rewards.eos_reward()
  over = rewards.overlong_penalty(12, 4)
  s = np.asarray(rewards.score([tag, eos, over], x))
  np.testing.assert_array_equal(s[:, 0], [1, 0, 1])
  np.testing.assert_array_equal(s[:, 1], [1, 0, 1])
  # lengths 13 (12 chars + EOS), 8, 10 -> DAPO soft penalty with max 12, cache 4
  np.testing.assert_allclose(s[:, 2], [-1.0, 0.0, -0.5])


def test_reward_model_score_is_last_token_value():
  rm = testing.tiny_model("qwen2", seed=3, vocab_size=TOK.vocab_size, num_labels=1, lm_head=False)
  reward = rewards.reward_model_score(rm)
  x = _inputs(["12", "345"], ["12", "0"], prompts=["1+2=", "10+335="])
  got = jax.jit(lambda x, st: reward.fn(x, st))(x, reward.state)
  for i, (p, c) in enumerate([("1+2=", "12"), ("10+335=", "345")]):
    ids = TOK.encode(p + c) + [TOK.eos_id]
    want = rm.values(rm.hidden_states(jnp.asarray([ids])))[0, -1]
    np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_reward_model_needs_scalar_head():
  with pytest.raises(ValueError, match="no scalar head"):
    rewards.reward_model_score(testing.tiny_model("llama"))
