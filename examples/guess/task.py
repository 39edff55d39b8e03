"""The number-guessing game as a task: every prompt is the same, the secret
is only in the record, so a policy can only win by reading the
environment's answers (`rankjax.envs.GuessNumber`, a host environment).

SFT demonstrations are binary searches written out as whole transcripts
(guesses and the game's answers); GRPO then plays the game with the
environment in the loop and is rewarded by it (`grpo.rewards=("env",)`).
"""

from rankjax.data.tasks import Task
from rankjax.envs import guess_records

LOW, HIGH = 0, 15


def binary_search(secret: int, low: int = LOW, high: int = HIGH) -> str:
  """The transcript of a binary search for `secret`."""
  lines = []
  while True:
    guess = (low + high) // 2
    if guess == secret:
      return "".join(lines) + f"<guess>{guess}</guess>correct\n"
    answer = "higher" if guess < secret else "lower"
    lines.append(f"<guess>{guess}</guess>{answer}\n")
    low, high = (guess + 1, high) if guess < secret else (low, guess - 1)


class GuessTask(Task):
  name = "guess"

  def records(self, split: str) -> list[dict]:
    rows = guess_records(2000 if split == "train" else 200, seed=0 if split == "train" else 1,
                         low=LOW, high=HIGH)
    return [dict(r, completion=binary_search(int(r["answer"]))) for r in rows]

  @property
  def has_verifier(self) -> bool:
    return True

  def verify(self, text: str, record: dict) -> float:
    """Won: the transcript holds the right guess answered `correct`."""
    return float(f"<guess>{record['answer']}</guess>correct" in text)

  def extract_answer(self, text: str):
    return text.rsplit("<guess>", 1)[-1].split("</guess>", 1)[0] if "<guess>" in text else None


def make_task() -> GuessTask:
  return GuessTask()
