"""Multi-turn rollouts inside the compiled decode loop against a host
reference that runs the same model turn by turn with `generate` and the
environment in Python."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import envs, sampling, testing
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
BUDGET = 4          # model tokens per turn
MAX_TURNS = 3
N = 40              # the whole completion buffer


def _model(seed=0):
  return testing.tiny_model("llama", vocab_size=TOK.vocab_size, seed=seed)


def _prompts():
  return [TOK.encode("12+34=", add_bos=True), TOK.encode("7*8=", add_bos=True),
          TOK.encode("100-1=", add_bos=True)]


LIMITS = envs.Limits(max_turns=MAX_TURNS, turn_max_tokens=BUDGET, max_observation_tokens=12)


def _config(**kw):
  return sampling.SamplingConfig(max_new_tokens=N, temperature=0.0, eos_token_ids=(TOK.eos_id,),
                                 buckets=(N, 64), **kw)


def _reference(model, prompt, env, record):
  """Turn by turn on the host: greedy `generate` of one turn (up to the turn
  budget, cut at a turn end or EOS), then `env.step` on its text."""
  state, context = env.reset(record), list(prompt)
  tokens, generated, logprobs = [], [], []
  turns, reward = 0, 0.0
  close = tuple(TOK.encode(env.turn_end))
  while len(tokens) < N:
    cfg = _config()
    out = sampling.generate(model, [context], sampling.SamplingConfig(
        max_new_tokens=min(BUDGET, N - len(tokens)), temperature=0.0,
        eos_token_ids=(TOK.eos_id,), buckets=(64,)))
    turn = np.asarray(out.tokens[0, :int(out.lengths[0])]).tolist()
    lps = np.asarray(out.logprobs[0, :len(turn)]).tolist()
    for k in range(1, len(turn) + 1):         # a turn-end sequence cuts the turn
      if tuple(turn[max(0, k - len(close)):k]) == close and k >= len(close):
        turn, lps = turn[:k], lps[:k]
        break
    tokens += turn; generated += [True] * len(turn); logprobs += lps
    context += turn
    if turn[-1] == TOK.eos_id or len(tokens) >= N:
      break
    if turns == MAX_TURNS:
      break
    step = env.step(state, TOK.decode(turn))
    state, turns, reward = step.state, turns + 1, reward + step.reward
    obs = TOK.encode(step.observation)[: N - len(tokens)]
    tokens += obs; generated += [False] * len(obs); logprobs += [0.0] * len(obs)
    context += obs
    if step.done:
      break
  return tokens, generated, logprobs, turns


@pytest.mark.parametrize("observations", envs.OBSERVATIONS)
@pytest.mark.parametrize("kind", ["traceable", "host"])
def test_multiturn_rollout_equals_turn_by_turn_reference(kind, observations):
  model = _model()
  records = [{"prompt": "x", "answer": "0"}] * 3
  limits = dataclasses.replace(LIMITS, observations=observations)
  env = (envs.calculator(TOK, limits) if kind == "traceable"
         else envs.host(envs.HostCalculator(), TOK, records, limits))
  out = sampling.generate(model, _prompts(), _config(), env=env)
  for r, prompt in enumerate(_prompts()):
    tokens, generated, logprobs, turns = _reference(model, prompt, envs.HostCalculator(), {})
    n = int(out.lengths[r])
    assert np.asarray(out.tokens[r, :n]).tolist() == tokens
    assert np.asarray(out.generated[r, :n]).tolist() == generated
    assert not np.asarray(out.generated[r, n:]).any()
    np.testing.assert_allclose(np.asarray(out.logprobs[r, :n]), logprobs, atol=1e-5)
    assert int(out.turns[r]) == turns
  assert int(out.turns.max()) >= 2      # the test exercises several turns
  assert int(out.env_errors.sum()) == int(out.turns.sum())   # a random model writes no valid call


def test_traceable_and_host_calculator_give_identical_rollouts():
  model = _model(seed=3)
  prompts = _prompts()
  records = [{"prompt": "x"}] * len(prompts)
  cfg = sampling.SamplingConfig(max_new_tokens=N, temperature=1.0, num_samples=4,
                                eos_token_ids=(TOK.eos_id,), buckets=(N, 64))
  a = sampling.generate(model, prompts, cfg, jax.random.key(5), env=envs.calculator(TOK, LIMITS))
  b = sampling.generate(model, prompts, cfg, jax.random.key(5),
                        env=envs.host(envs.HostCalculator(), TOK, records, LIMITS))
  for field in ("tokens", "lengths", "generated", "turns", "env_errors", "finished"):
    np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-6)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_prefilled_and_forced_observations_give_the_same_rollouts(penalty):
  """One chunk per observation or one token per decode step: the same
  transcripts, masks, log-probs and turn rewards, including rows whose
  observation is cut by the token budget and a repetition penalty that must
  see observation tokens."""
  model = _model(seed=1)
  prompts = _prompts()
  cfg = _config(num_samples=3, repetition_penalty=penalty)
  a, b = (sampling.generate(model, prompts, cfg, env=envs.calculator(TOK, envs.Limits(
      max_turns=6, turn_max_tokens=3, max_observation_tokens=12, observations=o)))
          for o in ("prefill", "forced"))
  for field in ("tokens", "lengths", "generated", "turns", "env_errors", "finished"):
    np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
  for field in ("logprobs", "turn_rewards", "env_reward"):
    np.testing.assert_allclose(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)),
                               atol=1e-5)
  # Rows reach the end of the buffer inside an observation (cut there).
  cut = np.asarray(a.lengths) == N
  assert cut.any() and int(a.turns.max()) >= 3
  assert not np.asarray(a.generated)[cut, -1].all()


def test_observations_mode_is_checked():
  with pytest.raises(ValueError, match="observations must be one of"):
    envs.Limits(observations="chunked")
