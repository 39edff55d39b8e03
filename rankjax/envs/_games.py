"""GuessNumber: a small stateful host environment (the number game).

The record holds a secret integer; the prompt states its range. Each model
turn ends with `</guess>`; the environment compares the turn's last
`<guess>N</guess>` with the secret and answers `higher`, `lower` or
`correct` (reward 1, episode over). Solving it takes a binary search over
several turns, so a policy only scores by reading the observations: the
smallest test that multi-turn credit assignment works. All text is
printable ASCII, so the built-in character tokenizer can play it.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

from rankjax.envs._protocol import HostStep

OPEN, CLOSE = "<guess>", "</guess>"
ERROR = f"error: write {OPEN}N{CLOSE}\n"
_GUESS = re.compile(r"<guess>\s*(-?\d+)\s*</guess>")


class GuessState(NamedTuple):
  """The secret and the guesses so far (for logs; the rule ignores them)."""
  secret: int
  guesses: tuple[int, ...] = ()


def last_guess(turn_text: str) -> int | None:
  """The number in the turn's last `<guess>N</guess>` (None if none is
  well formed: a turn cut by `turn_max_tokens` has none)."""
  matches = _GUESS.findall(turn_text)
  return int(matches[-1]) if matches else None


class GuessNumber:
  """The number game as a `HostEnvironment` (`rankjax.envs.host`).

  reset reads `record["answer"]` (an int or its decimal string). A turn
  without a well-formed final guess answers `ERROR` with `error=True`.
  """
  name = "guess"
  turn_end = CLOSE

  def reset(self, record: dict) -> GuessState:
    return GuessState(int(record["answer"]))

  def step(self, state: GuessState, turn_text: str) -> HostStep:
    guess = last_guess(turn_text)
    if guess is None:
      return HostStep(state, ERROR, 0.0, False, True)
    state = state._replace(guesses=(*state.guesses, guess))
    if guess == state.secret:
      return HostStep(state, "correct\n", 1.0, True)
    return HostStep(state, "higher\n" if guess < state.secret else "lower\n")


def guess_records(n: int, seed: int, low: int = 0, high: int = 15) -> list[dict]:
  """`n` records `{"prompt", "answer"}` with secrets uniform in [low, high]
  (the same list for the same seed), for a recipe's task."""
  if low > high:
    raise ValueError(f"guess_records: low {low} > high {high}")
  rng = random.Random(seed)
  prompt = (f"I picked an integer from {low} to {high}. Guess it: write {OPEN}N{CLOSE}. "
            "I answer higher, lower or correct.\n")
  return [{"prompt": prompt, "answer": str(rng.randint(low, high))} for _ in range(n)]
