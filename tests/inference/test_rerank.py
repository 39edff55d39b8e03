"""Scorers, reward-model scoring and verify-and-revise on tiny models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import inference as I
from rankjax import sampling, testing
from rankjax.inference import _prompts
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()


@pytest.fixture(scope="module")
def model():
  return testing.tiny_model("llama", vocab_size=TOK.vocab_size, hidden_size=32,
                            intermediate_size=64)


def _fake_output(tokens, lengths, logprobs, generated=None):
  tokens = jnp.asarray(tokens, jnp.int32)
  r, n = tokens.shape
  mask = np.arange(n)[None] < np.asarray(lengths)[:, None]
  return sampling.SampleOutput(tokens=tokens, lengths=jnp.asarray(lengths, jnp.int32),
                               finished=jnp.zeros(r, bool),
                               logprobs=jnp.asarray(logprobs, jnp.float32),
                               sampling_logprobs=jnp.zeros(tokens.shape, jnp.float32),
                               generated=jnp.asarray(mask if generated is None else generated),
                               turns=jnp.zeros(r, jnp.int32), env_reward=jnp.zeros(r),
                               turn_rewards=jnp.zeros((r, n)), env_errors=jnp.zeros(r, jnp.int32))


def test_loglik_scores_skip_environment_observations():
  """A multi-turn row: its observation tokens (log-prob 0, not generated)
  count neither in the sum nor in the length."""
  out = _fake_output([[5, 6, 7, 8]], [4], [[-1.0, 0.0, 0.0, -3.0]],
                     generated=[[True, False, False, True]])
  np.testing.assert_allclose(I.loglik_scores(out), [-2.0])


def test_loglik_scores_mask_by_length():
  out = _fake_output([[5, 6, 0], [7, 0, 0]], [2, 1],
                     [[-1.0, -3.0, -9.0], [-0.5, -9.0, -9.0]])
  np.testing.assert_allclose(I.loglik_scores(out), [-2.0, -0.5])
  np.testing.assert_allclose(I.loglik_scores(out, normalize=False), [-4.0, -0.5])
  assert I.group(np.arange(6), 3).tolist() == [[0, 1, 2], [3, 4, 5]]
  assert I.group_list(list("abcd"), 2) == [["a", "b"], ["c", "d"]]


def test_verifier_scores_repeat_references():
  texts = ["3", "4", "7", "7"]
  scores = I.verifier_scores(texts, ["3", "7"], lambda t, a: float(t == a))
  assert scores.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_reward_model_scores_match_full_forward():
  rm = testing.tiny_model("qwen2", seed=3, vocab_size=TOK.vocab_size, hidden_size=32,
                          intermediate_size=64, num_labels=1)
  prompts = [TOK.encode("1+2=", add_bos=True), TOK.encode("10+20=", add_bos=True)]
  # One completion per prompt; rows of different lengths share a padded batch.
  completions = [TOK.encode("3") + [TOK.eos_id], TOK.encode("31 and more")]
  got = I.reward_model_scores(rm, prompts, completions)
  assert got.shape == (2,)
  for r, c in enumerate(completions):
    seq = jnp.asarray([prompts[r] + c], jnp.int32)
    want = rm.values(rm.hidden_states(seq))[0, -1]
    assert got[r] == pytest.approx(float(want), abs=1e-4)


def test_verify_and_revise_appends_feedback_and_runs_rounds(model, monkeypatch):
  seen = []
  real_generate = sampling.generate

  def spy(m, prompts, cfg, rng=None, **kw):
    seen.append([TOK.decode(p) for p in prompts])
    return real_generate(m, prompts, cfg, rng, **kw)

  monkeypatch.setattr(sampling, "generate", spy)
  cfg = sampling.SamplingConfig(max_new_tokens=2, temperature=1.0)
  verifier = lambda i, text: 1.0 if i == 1 else 0.0   # prompt 1 passes at once
  feedback = lambda i, text, score: f"?{int(score)}"  # short: prompts stay in one bucket
  result = I.verify_and_revise(model, TOK, ["1+1=", "2+2="], verifier, feedback, cfg,
                               rounds=2, rng=jax.random.key(0))
  assert result.accuracy == [0.5, 0.5, 0.5]
  assert result.rounds_run == 2
  assert [len(a) for a in result.attempts] == [3, 1]
  assert result.passed.tolist() == [False, True]
  # Round 0 samples both prompts; later rounds only the failing one, whose
  # context is prompt + attempt + feedback, twice over.
  assert seen[0] == ["1+1=", "2+2="]
  a = result.attempts[0]
  assert seen[1] == [f"1+1={a[0]}?0"]
  assert seen[2] == [f"1+1={a[0]}?0{a[1]}?0"]
  assert result.contexts == [seen[2][0], "2+2="]
  assert result.completions[0] == a[2]


def test_verify_and_revise_stops_when_all_pass(model):
  calls = {}

  def verifier(i, text):  # each prompt passes on its second attempt
    calls[i] = calls.get(i, 0) + 1
    return float(calls[i] >= 2)

  cfg = sampling.SamplingConfig(max_new_tokens=2, temperature=0.0)
  result = I.verify_and_revise(model, TOK, ["5-3=", "9-9="], verifier,
                               lambda i, t, s: " retry:", cfg, rounds=5)
  assert result.accuracy == [0.0, 1.0]
  assert result.passed.all()
  with pytest.raises(ValueError, match="num_samples"):
    I.verify_and_revise(model, TOK, ["1="], verifier, lambda *a: "",
                        sampling.SamplingConfig(num_samples=2), rounds=1)


def test_prompt_templates():
  assert I.zero_shot_cot("2+3=?") == "Q: 2+3=?\nA: Let's think step by step."
  p = I.think_prompt("2+3=?")
  assert p.endswith("2+3=?\n<think>") and p.startswith(_prompts.THINK_INSTRUCTION)
  assert I.think_prompt("x", instruction="") == "x\n<think>"
  text = I.format_think("2 plus 3 is 5", "5")
  assert I.extract_think_answer(text) == "5"
  assert I.extract_think_answer("<think>a</think>b</think>\n\n 42 \nmore") == "42"
  assert I.extract_think_answer("hmm</think> <answer> 7 </answer>") == "7"
  assert I.extract_think_answer("still thinking 5") is None
  assert I.extract_think_answer("x</think>\n  \n") is None
  assert I.extract_think_answer("x</think><answer>5") is None
  assert I.split_think("<think>r</think>a") == ("r", "a")
  assert I.encode_prompt(TOK, "1+2=") == TOK.encode("1+2=", add_bos=True)
  chat = I.encode_prompt(TOK, "1+2=", chat=True)
  assert TOK.decode(chat) == "user: 1+2=\nassistant: "
