"""Rewards for online RL: scored inside the compiled step, or on the host.

A `Reward` is either
  (a) traceable: `fn(inputs: RewardInputs, state) -> f32[R]`, evaluated inside
      the jitted GRPO/PPO step (built-ins: exact-answer verifier, format
      reward, length penalty, reward-model score); or
  (b) a plain Python callable with TRL's convention
      `f(prompts, completions, **dataset_columns) -> list[float | None]`,
      wrapped by `host_reward` and run on the host through `jax.pure_callback`
      (regex, sympy, code execution...).
`from_names` builds the list a config names (built-in names and
"file.py:function" entries); `batch_scorer` scores sampled completions with
it outside a step (evaluation, reranking). Several rewards combine with weights; NaN (None on the host) means "this
reward does not apply to this sample" and is left out of the weighted sum; a
sample no reward applies to gets NaN, which the step masks out.
"""

from rankjax.rewards._core import (
    Reward,
    RewardInputs,
    batch_scorer,
    combine,
    score,
)
from rankjax.rewards._builtin import (
    arithmetic_correct,
    contains_reward,
    env_reward,
    eos_reward,
    overlong_penalty,
    reward_model_score,
    verifier_reward,
)
from rankjax.rewards._host import RewardError, call_reward, host_reward, score_on_host
from rankjax.rewards._named import BUILTIN, check_functions, from_names, is_chat, verifier

__all__ = [
    "Reward", "RewardInputs", "batch_scorer", "combine", "score", "arithmetic_correct",
    "contains_reward", "env_reward", "eos_reward", "overlong_penalty", "reward_model_score",
    "host_reward", "score_on_host", "RewardError", "call_reward", "BUILTIN", "from_names",
    "is_chat", "verifier", "verifier_reward", "check_functions",
]
