"""GuessNumber: a binary-search player wins from the observations alone;
malformed guesses are errors; records are seeded and character-tokenizable."""

import string

import pytest

from rankjax.envs._games import ERROR, GuessNumber, GuessState, guess_records, last_guess
from rankjax.tokenizer import CharTokenizer


def _play(env, record, low, high):
  """Binary search driven only by the observations; returns the steps."""
  state, steps = env.reset(record), []
  while True:
    guess = (low + high) // 2
    out = env.step(state, f"Maybe {guess}. <guess>{guess}</guess>")
    steps.append((guess, out))
    if out.done:
      return steps
    low, high = (guess + 1, high) if out.observation == "higher\n" else (low, guess - 1)
    state = out.state


@pytest.mark.parametrize("secret", [0, 5, 11, 15])
def test_binary_search_wins_in_log_steps(secret):
  env = GuessNumber()
  assert (env.name, env.turn_end) == ("guess", "</guess>")
  steps = _play(env, {"answer": str(secret)}, 0, 15)
  assert len(steps) <= 5  # floor(log2(16)) + 1
  *misses, (last, win) = steps
  assert last == secret
  assert (win.observation, win.reward, win.done, win.error) == ("correct\n", 1.0, True, False)
  assert win.state == GuessState(secret, tuple(g for g, _ in steps))
  for guess, out in misses:
    assert out.observation == ("higher\n" if guess < secret else "lower\n")
    assert (out.reward, out.done, out.error) == (0.0, False, False)


def test_the_last_guess_counts_and_bad_guesses_are_errors():
  env = GuessNumber()
  state = env.reset({"answer": 7})
  assert env.step(state, "<guess>3</guess> no: <guess> 7 </guess>").observation == "correct\n"
  for turn in ("<guess>seven</guess>", "7</guess>", "<guess></guess>", ""):
    out = env.step(state, turn)
    assert (out.observation, out.reward, out.done, out.error) == (ERROR, 0.0, False, True)
    assert out.state == state
  assert ERROR == "error: write <guess>N</guess>\n"
  assert last_guess("<guess>-2</guess>") == -2


def test_guess_records_are_seeded_in_range_and_ascii():
  records = guess_records(50, seed=3, low=2, high=9)
  assert records == guess_records(50, seed=3, low=2, high=9)
  assert records != guess_records(50, seed=4, low=2, high=9)
  secrets = {int(r["answer"]) for r in records}
  assert secrets <= set(range(2, 10)) and len(secrets) > 4
  prompt = records[0]["prompt"]
  assert "from 2 to 9" in prompt and "<guess>N</guess>" in prompt
  tok = CharTokenizer()
  for text in (prompt, ERROR, "higher\n", "lower\n", "correct\n"):
    assert set(text) <= set(string.printable) and tok.decode(tok.encode(text)) == text
  assert _play(GuessNumber(), records[0], 2, 9)[-1][1].reward == 1.0
  with pytest.raises(ValueError, match="low 5 > high 4"):
    guess_records(1, 0, low=5, high=4)
