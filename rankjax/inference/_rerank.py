"""Re-ranking at inference: sample N candidates, score them, pick or vote.

Candidates come from `sampling.generate` with `num_samples = G`: row r of a
`SampleOutput` continues prompt r // G, so every per-row array reshapes to
[B, G] (`group`). Scorers map rows to one float each (higher = better):

* `verifier_scores`: a host Python verifier over decoded text;
* `reward_model_scores`: a scalar-head model's value at the last completion
  token (`rewards.reward_model_score`, as GRPO/PPO score in-graph);
* `loglik_scores`: the policy's own (length-normalised) log-likelihood,
  straight from `SampleOutput.logprobs` — no extra forward.

`best_of_n` picks the top-scored candidate per prompt, `soft_best_of_n`
draws one with probability softmax(r / β) (sampling π·exp(r/β), the target
of KL-regularised training at the same β); `majority_vote` /
`weighted_vote` aggregate extracted answers (Wang et al. 2022, arXiv
2203.11171); `verify_and_revise` loops sample -> verify -> append the
verifier's feedback -> resample (RISE, arXiv 2407.18219; Snell et al. 2024,
arXiv 2408.03314 on sequential revision vs parallel sampling).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Sequence

import jax
import numpy as np

from rankjax import rewards as rewards_lib, sampling
from rankjax.data.tasks import encode_prompt
from rankjax.inference._metrics import majority_answer

# ---------------------------------------------------------------------------
# Reading a SampleOutput.
# ---------------------------------------------------------------------------


def group(x_r, num_samples: int) -> np.ndarray:
  """[R, ...] -> [B, G, ...] with G = num_samples (row r -> (r // G, r % G))."""
  x_r = np.asarray(x_r)
  if x_r.shape[0] % num_samples:
    raise ValueError(f"{x_r.shape[0]} rows is not a multiple of num_samples={num_samples}")
  return x_r.reshape(x_r.shape[0] // num_samples, num_samples, *x_r.shape[1:])


def group_list(items: Sequence[Any], num_samples: int) -> list[list[Any]]:
  """A flat list of R = B * G items -> B lists of G."""
  if len(items) % num_samples:
    raise ValueError(f"{len(items)} items is not a multiple of num_samples={num_samples}")
  return [list(items[i:i + num_samples]) for i in range(0, len(items), num_samples)]


def completion_ids(out: sampling.SampleOutput) -> list[list[int]]:
  """Each row's completion ids (the EOS included when it was sampled)."""
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  return [tokens[r, :lengths[r]].tolist() for r in range(tokens.shape[0])]


def decode_completions(out: sampling.SampleOutput, tokenizer) -> list[str]:
  """Each row's completion text (special tokens such as EOS dropped)."""
  return [tokenizer.decode(ids) for ids in completion_ids(out)]


# ---------------------------------------------------------------------------
# Scorers: rows -> f32[R], higher is better.
# ---------------------------------------------------------------------------


def loglik_scores(out: sampling.SampleOutput, *, normalize: bool = True) -> np.ndarray:
  """The policy's own score of each completion:

      s = Σ_t log π(y_t | x, y_<t) · m_t  [ / Σ_t m_t  if normalize ]

  from the raw-model log-probs the sampler recorded (not the processed
  sampling distribution), m the model's own tokens (a multi-turn
  transcript's observations excluded). Length normalisation (the
  mean per-token log-prob) stops the ranking from simply preferring short
  completions (Wu et al. 2016, arXiv 1609.08144 §7 discusses the bias).
  """
  logprobs = np.asarray(out.logprobs, np.float64)
  mask = np.asarray(out.mask) & np.asarray(out.generated)
  lengths = mask.sum(axis=1)
  total = np.sum(np.where(mask, logprobs, 0.0), axis=1)
  return total / np.maximum(lengths, 1) if normalize else total


def verifier_scores(texts: Sequence[str], references: Sequence[Any],
                    verifier: Callable[[str, Any], float]) -> np.ndarray:
  """verifier(text_r, reference_{r // G}) per row; G = len(texts) / len(references).

  `verifier` is any host callable, e.g. `tasks.verify` (arithmetic) or
  `tasks.verify_numeric` (GSM8K).
  """
  if not references or len(texts) % len(references):
    raise ValueError(f"{len(texts)} texts for {len(references)} references")
  g = len(texts) // len(references)
  return np.asarray([float(verifier(t, references[r // g])) for r, t in enumerate(texts)])


def reward_model_scores(reward_model, prompts: Sequence[Sequence[int]],
                        completions: sampling.SampleOutput | Sequence[Sequence[int]], *,
                        pad_id: int = 0) -> np.ndarray:
  """Reward of each (prompt, completion): the scalar head's value at the LAST
  completion token (the EOS when sampled — what a Bradley–Terry reward model
  trained on prompt + completion + EOS reads; Ouyang et al. 2022), computed
  by `rewards.reward_model_score`, the reward GRPO and PPO train with.

  reward_model: a `Transformer` with `num_labels=1`. prompts: B token lists;
  completions: a `SampleOutput` or R = B * G token lists (row r continues
  prompt r // G). Returns f32[R].
  """
  if reward_model.config.num_labels != 1:
    raise ValueError("reward_model_scores needs a scalar-head model (num_labels=1), got "
                     f"num_labels={reward_model.config.num_labels}")
  if isinstance(completions, sampling.SampleOutput):
    tokens, mask, finished = completions.tokens, completions.mask, completions.finished
  else:
    width = max(1, max(map(len, completions)))
    tokens = np.full((len(completions), width), pad_id, np.int32)
    mask = np.zeros((len(completions), width), bool)
    for i, c in enumerate(completions):
      tokens[i, :len(c)], mask[i, :len(c)] = c, True
    finished = np.ones(len(completions), bool)
  score = rewards_lib.batch_scorer([rewards_lib.reward_model_score(reward_model)])
  return score(prompts, tokens, mask, finished, np.arange(len(prompts)), pad_id=pad_id)


# ---------------------------------------------------------------------------
# Selection and voting.
# ---------------------------------------------------------------------------


def best_index(scores_bg) -> np.ndarray:
  """i32[B]: per prompt the index of the top score (first on ties; NaN last)."""
  scores_bg = np.nan_to_num(np.asarray(scores_bg, np.float64), nan=-np.inf)
  return np.argmax(scores_bg, axis=-1)


def best_of_n(candidates: Sequence[Sequence[Any]], scores) -> list[Any]:
  """Best-of-N: per prompt the candidate with the highest score.

  candidates: B lists of G candidates (text, answers, token lists...);
  scores: [B, G] (a nested list or array). Ties go to the earlier candidate.
  """
  scores_bg = np.asarray(scores, np.float64)
  if scores_bg.shape != (len(candidates), len(candidates[0]) if candidates else 0):
    raise ValueError(f"scores {scores_bg.shape} do not match {len(candidates)} prompts "
                     "of G candidates")
  return [cands[i] for cands, i in zip(candidates, best_index(scores_bg))]


def soft_best_of_n(candidates: Sequence[Sequence[Any]], rewards, *, beta: float,
                   rng: np.random.Generator | int = 0) -> list[Any]:
  """Soft best-of-N: per prompt one candidate drawn with probability
  softmax(r / β) over its G candidates (self-normalised importance
  resampling toward π·exp(r/β) when the candidates are samples of π; NaN
  rewards get probability 0). β → 0 is best-of-N, β → ∞ a uniform pick.
  `inference.soft_best_of_n_expected` is the exact accuracy of this pick.

  candidates: B lists of G; rewards: [B, G]; rng: a numpy Generator or seed.
  """
  r = np.asarray(rewards, np.float64)
  if r.shape != (len(candidates), len(candidates[0]) if candidates else 0):
    raise ValueError(f"rewards {r.shape} do not match {len(candidates)} prompts of G candidates")
  if beta <= 0:
    raise ValueError(f"soft best-of-n needs beta > 0 (best_of_n is the beta -> 0 limit), got {beta}")
  rng = np.random.default_rng(rng)
  picks = []
  for cands, row in zip(candidates, r):
    ok = ~np.isnan(row)
    z = np.where(ok, row / beta, -np.inf)
    w = np.exp(z - z[ok].max()) if ok.any() else np.ones_like(row)
    picks.append(cands[int(rng.choice(len(cands), p=w / w.sum()))])
  return picks


def majority_vote(answers: Sequence[Sequence[Hashable | None]]) -> list[Hashable | None]:
  """Self-consistency: per prompt the most frequent extracted answer (None
  never wins; ties to the first occurring). See `majority_answer`."""
  return [majority_answer(a) for a in answers]


def weighted_vote(answers: Sequence[Sequence[Hashable | None]],
                  weights) -> list[Hashable | None]:
  """Per prompt the answer with the largest total weight Σ w_i (e.g. σ of a
  reward-model score or a verifier probability; weights must be >= 0)."""
  if len(weights) != len(answers):
    raise ValueError(f"{len(answers)} prompts but {len(weights)} weight rows")
  return [majority_answer(a, list(map(float, w))) for a, w in zip(answers, weights)]


# ---------------------------------------------------------------------------
# Verify and revise.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ReviseResult:
  """Outcome of `verify_and_revise` for B prompts.

  completions: B final completions (the last attempt per prompt).
  scores:      f64[B] verifier scores of those completions.
  passed:      bool[B] score >= pass_threshold.
  accuracy:    per round r = 0..rounds_run, the fraction of prompts passing
               after round r (round 0 = the first attempt, before any
               feedback). Non-decreasing: passing prompts are never resampled.
  attempts:    per prompt the list of its completions, in order.
  contexts:    per prompt the text of the last prompt it was sampled from.
  """
  completions: list[str]
  scores: np.ndarray
  passed: np.ndarray
  accuracy: list[float]
  attempts: list[list[str]]
  contexts: list[str]

  @property
  def rounds_run(self) -> int:
    return len(self.accuracy) - 1


def _with_tokenizer(cfg: sampling.SamplingConfig, tokenizer) -> sampling.SamplingConfig:
  if cfg.eos_token_ids:
    return cfg
  return dataclasses.replace(cfg, eos_token_ids=tuple(tokenizer.eos_ids),
                             pad_token_id=tokenizer.pad_id)


def verify_and_revise(model, tokenizer, prompts: Sequence[str],
                      verifier: Callable[[int, str], float],
                      feedback_fn: Callable[[int, str, float], str],
                      sampling_cfg: sampling.SamplingConfig, rounds: int, rng=None, *,
                      pass_threshold: float = 1.0) -> ReviseResult:
  """Sample -> verify -> give failures the verifier's feedback -> resample.

  Round 0 samples one completion per prompt. In each of the next `rounds`
  rounds, every prompt that has not passed yet is resampled from

      context ← context + completion + feedback_fn(i, completion, score)

  (text concatenation: the model sees its previous attempt and the critique,
  as in RISE's multi-turn revision). Stops early once every prompt passes.

  verifier(i, completion) -> score of prompt i's completion; a prompt passes
    when score >= pass_threshold.
  feedback_fn(i, completion, score) -> text appended after a failed attempt
    (include the separators you want, e.g. "\\nWrong, try again.\\n").
  sampling_cfg: decoding settings with num_samples = 1; an empty
    `eos_token_ids` takes the tokenizer's EOS ids.
  Prompts are encoded as BOS + text (`encode_prompt`).
  """
  if sampling_cfg.num_samples != 1:
    raise ValueError("verify_and_revise samples one completion per prompt per round; "
                     f"got num_samples={sampling_cfg.num_samples}")
  if rounds < 0:
    raise ValueError(f"rounds must be >= 0, got {rounds}")
  cfg = _with_tokenizer(sampling_cfg, tokenizer)
  rng = jax.random.key(0) if rng is None else rng
  b = len(prompts)
  contexts = list(prompts)
  completions = [""] * b
  scores = np.zeros(b)
  attempts: list[list[str]] = [[] for _ in range(b)]
  todo = list(range(b))
  accuracy = []
  for r in range(rounds + 1):
    ids = [encode_prompt(tokenizer, contexts[i]) for i in todo]
    out = sampling.generate(model, ids, cfg, rng=jax.random.fold_in(rng, r))
    for i, text in zip(todo, decode_completions(out, tokenizer)):
      completions[i] = text
      attempts[i].append(text)
      scores[i] = float(verifier(i, text))
    passed = scores >= pass_threshold
    accuracy.append(float(passed.mean()) if b else float("nan"))
    todo = [i for i in todo if not passed[i]]
    if not todo or r == rounds:
      break
    for i in todo:
      contexts[i] = contexts[i] + completions[i] + feedback_fn(i, completions[i], scores[i])
  return ReviseResult(completions=completions, scores=scores,
                      passed=scores >= pass_threshold, accuracy=accuracy,
                      attempts=attempts, contexts=contexts)
