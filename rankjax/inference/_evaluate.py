"""Evaluation on verifiable problems: sample k per prompt, verify, summarise.

    samples = collect(model, tok, problems, k=8, temperature=1.0, rng=key)
    metrics = summarize(samples)          # pass@1, pass@8, maj@8, best_of_8, ...
    curve = pass_at_k_curve(samples.correct)   # {1: ..., 8: ...} for plots

`evaluate` is the two in one. Problems are a task's records (`prompt` plus
reference columns); the `Task` encodes, verifies and extracts answers. Each
prompt is prefilled once and its k samples decoded together
(`sampling.generate(num_samples=k)`); correctness comes from the host
Python verifier on decoded text, which agrees exactly with the in-graph
verifier GRPO trains against.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from rankjax import parallel, rewards as rewards_lib, sampling
from rankjax.data import tasks
from rankjax.inference import _metrics as M
from rankjax.inference._rerank import decode_completions, group, group_list, loglik_scores


@dataclasses.dataclass
class EvalSamples:
  """P problems × k samples, verified and scored.

  texts / answers: [P][k] completion text and its extracted answer (None
    when no answer could be read).
  correct:  f64[P, k] verifier score (1.0 = correct).
  loglik:   f64[P, k] length-normalised policy log-likelihood.
  lengths:  i64[P, k] completion tokens (EOS included); finished: bool[P, k].
  reward:   f64[P, k] reward-model scores, or None.
  greedy_correct: f64[P] verifier score of the greedy completion, or None.
  target_reward: f64[P, k] the training reward (what GRPO optimises, the
    verifier's weight on `correct`), or None.
  turns: i64[P, k] environment turns of multi-turn samples (tool calls), or None.
  """
  texts: list[list[str]]
  answers: list[list[Any]]
  correct: np.ndarray
  loglik: np.ndarray
  lengths: np.ndarray
  finished: np.ndarray
  reward: np.ndarray | None = None
  greedy_correct: np.ndarray | None = None
  target_reward: np.ndarray | None = None
  turns: np.ndarray | None = None

  @property
  def k(self) -> int:
    return self.correct.shape[1]


def _sampling_config(tokenizer, *, k, temperature, max_new_tokens, top_k, top_p, min_p):
  return sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_k=top_k, top_p=top_p, min_p=min_p, num_samples=k,
                                 eos_token_ids=tuple(tokenizer.eos_ids),
                                 pad_token_id=tokenizer.pad_id)


def _sample(model, prompts, cfg, rng, batch_size, env=None):
  """Generate in chunks of `batch_size` prompts: (outputs, chunk prompts).
  Each chunk is waited for before the next is dispatched: the chunks are
  independent programs, and on a mesh two in flight can deadlock
  (`parallel.settled`). With an environment, row i of the problems is
  record i of its `records`."""
  outs = []
  for c, start in enumerate(range(0, len(prompts), batch_size)):
    chunk = prompts[start:start + batch_size]
    extras = {"example_index": np.arange(start, start + len(chunk), dtype=np.int32)}
    out = sampling.generate(model, chunk, cfg, rng=jax.random.fold_in(rng, c), env=env,
                            extras=extras if env is not None else None)
    outs.append((parallel.settled(out), chunk))
  return outs


def collect(model, tokenizer, problems: Sequence[dict], *, k: int, temperature: float,
            rng, task: tasks.Task | None = None,
            verifier: Callable[[str, dict], float] | None = None,
            rewards: Sequence[rewards_lib.Reward] = (), max_new_tokens: int = 16,
            top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
            prompt_fn: Callable[[str], str] | None = None, greedy: bool = True,
            batch_size: int = 32, target_rewards: Sequence[rewards_lib.Reward] = (),
            target_correct_weight: float = 0.0, env=None) -> EvalSamples:
  """Sample k completions per problem and verify / score them.

  problems: the task's records (`prompt` plus its reference columns).
  task: encodes the prompts (`Task.prompt_ids`), verifies (`Task.verify`)
    and extracts answers for votes (`Task.extract_answer`); default: the
    built-in arithmetic task without chain of thought.
  verifier: `(completion_text, record) -> float` instead of the task's
    (`rewards.verifier`: a reward function for a task without one).
  rewards: scored on every sample with `rewards.batch_scorer` (their
    weighted sum fills `EvalSamples.reward`); host rewards index the
    problems by position.
  prompt_fn: rewrites each text prompt first (e.g. `zero_shot_cot`).
  greedy: also decode one greedy completion per problem.
  target_rewards, target_correct_weight: the training reward,
    `target_correct_weight · correct + Σ target_rewards` (a reward that
    does not apply adds 0), in `EvalSamples.target_reward` when either is
    given; soft best-of-N resamples by it. The same list as `rewards` is
    scored once.
  env: a multi-turn environment over `problems` (`envs.from_config`):
    samples are whole transcripts, verified as text (tool calls and
    observations included), and `EvalSamples.turns` counts their turns.
  """
  if not problems:
    raise ValueError("no problems to evaluate")
  task = task or tasks.Arithmetic()
  verifier = verifier or task.verify
  if prompt_fn is not None:
    problems = [dict(p, prompt=prompt_fn(p["prompt"])) for p in problems]
  tools = getattr(env, "tools_schema", None)   # a tool environment's schemas
  prompts = [task.prompt_ids(p, tokenizer, tools) for p in problems]
  kw = dict(temperature=temperature, max_new_tokens=max_new_tokens, top_k=top_k,
            top_p=top_p, min_p=min_p)
  sample_rng, greedy_rng = jax.random.split(rng)
  scorer = rewards_lib.batch_scorer(rewards) if rewards else None
  same = (len(target_rewards) == len(rewards)
          and all(t is r for t, r in zip(target_rewards, rewards)))
  target_scorer = (rewards_lib.batch_scorer(target_rewards)
                   if target_rewards and not same else None)

  texts, loglik, lengths, finished, reward, target, turns = [], [], [], [], [], [], []
  start = 0
  for out, chunk in _sample(model, prompts, _sampling_config(tokenizer, k=k, **kw),
                            sample_rng, batch_size, env):
    texts += decode_completions(out, tokenizer)
    loglik.append(loglik_scores(out))
    lengths.append(np.asarray(out.lengths))
    finished.append(np.asarray(out.finished))
    turns.append(np.asarray(out.turns))
    index = np.arange(start, start + len(chunk))
    if scorer is not None:
      reward.append(scorer(chunk, out.tokens, out.mask, out.finished, index,
                           pad_id=tokenizer.pad_id, env_reward_r=out.env_reward))
    if target_scorer is not None:
      target.append(target_scorer(chunk, out.tokens, out.mask, out.finished, index,
                                  pad_id=tokenizer.pad_id, env_reward_r=out.env_reward))
    start += len(chunk)
  correct = np.asarray([_score(verifier(t, problems[r // k])) for r, t in enumerate(texts)])
  target_reward = None
  if target_rewards or target_correct_weight:
    target = reward if same else target
    rest = np.nan_to_num(np.concatenate(target)) if target else 0.0
    target_reward = group(target_correct_weight * correct + rest, k)

  greedy_correct = None
  if greedy:
    cfg = _sampling_config(tokenizer, k=1, **dict(kw, temperature=0.0))
    greedy_texts = [t for out, _ in _sample(model, prompts, cfg, greedy_rng, batch_size, env)
                    for t in decode_completions(out, tokenizer)]
    greedy_correct = np.asarray([_score(verifier(t, p)) for t, p in zip(greedy_texts, problems)])

  return EvalSamples(
      texts=group_list(texts, k), answers=group_list([task.extract_answer(t) for t in texts], k),
      correct=group(correct, k), loglik=group(np.concatenate(loglik), k),
      lengths=group(np.concatenate(lengths), k), finished=group(np.concatenate(finished), k),
      reward=group(np.concatenate(reward), k) if reward else None,
      greedy_correct=greedy_correct, target_reward=target_reward,
      turns=group(np.concatenate(turns), k) if env is not None else None)


def _score(value) -> float:
  """A verifier's score; None ("does not apply") counts as wrong."""
  return 0.0 if value is None else float(value)


def vote_accuracy(answers: Sequence[Sequence[Any]], correct_pn,
                  weights_pn=None) -> float:
  """Accuracy of the (weighted) majority answer per problem, judged by the
  verifier: the voted answer is correct when the first sample that gave it
  was verified correct (so answers need no canonical form of their own).
  None votes are wrong."""
  correct_pn = np.asarray(correct_pn)
  hits = []
  for p, row in enumerate(answers):
    w = None if weights_pn is None else list(map(float, weights_pn[p]))
    voted = M.majority_answer(row, w)
    hits.append(voted is not None and correct_pn[p, list(row).index(voted)] > 0)
  return float(np.mean(hits)) if hits else float("nan")


def summarize(samples: EvalSamples, *, tilt_beta: float | None = None) -> dict[str, float]:
  """The metrics of one evaluation (all in [0, 1] except Kendall τ ∈ [−1, 1];
  NaN where undefined):

  pass@1          mean correctness over all k samples (unbiased pass@1)
  pass@k          unbiased pass@k with n = k (a problem counts if any sample is right)
  pass_gap@k      pass@k − pass@1: what the samples hold that one draw misses
  maj@k           self-consistency majority vote over extracted answers
  best_of_k       expected accuracy of the sample the policy ranks first by
                  length-normalised log-likelihood (ties averaged)
  best_of_k/reward, weighted_vote@k/reward   with a reward model: its
                  top-scored sample; votes weighted by σ(reward)
  best_of_k/target, soft_best_of_k   with the training reward
                  (`target_reward`): its top-scored sample, and soft
                  best-of-N at β = `tilt_beta` (`M.soft_best_of_n_expected`)
  greedy          greedy-decoding accuracy
  kendall_tau, ndcg   likelihood ranking vs correctness, means over the
                  problems with both right and wrong samples
  rank_informative    the fraction of such problems
  kendall_tau/reward  likelihood ranking vs reward ranking
  finished, mean_length   share of samples that emitted EOS; mean tokens
  turn_rate, mean_turns   with an environment: share of samples that took
                  a turn (called a tool), and turns per sample
  """
  k, c = samples.k, samples.correct
  num_correct = (c > 0).sum(1)
  out = {
      "k": k, "num_problems": c.shape[0],
      "pass@1": float((c > 0).mean()),
      f"pass@{k}": float(M.pass_at_k_batch(np.full(c.shape[0], k), num_correct, k).mean()),
      f"maj@{k}": vote_accuracy(samples.answers, c),
      f"best_of_{k}": M.best_of_n_curve(samples.loglik, c > 0, [k])[k],
  }
  out[f"pass_gap@{k}"] = out[f"pass@{k}"] - out["pass@1"]
  if samples.target_reward is not None:
    out[f"best_of_{k}/target"] = M.best_of_n_curve(samples.target_reward, c > 0, [k])[k]
    if tilt_beta is not None:
      out[f"soft_best_of_{k}"] = M.soft_best_of_n_expected(samples.target_reward, c > 0,
                                                           tilt_beta)
      out["tilt_beta"] = float(tilt_beta)
  if samples.reward is not None:
    out[f"best_of_{k}/reward"] = M.best_of_n_curve(samples.reward, c > 0, [k])[k]
    sigma = 0.5 * (1.0 + np.tanh(0.5 * samples.reward))  # σ(r), no overflow
    out[f"weighted_vote@{k}/reward"] = vote_accuracy(samples.answers, c, sigma)
  if samples.greedy_correct is not None:
    out["greedy"] = float((samples.greedy_correct > 0).mean())
  out.update(M.ranking_diagnostics(samples.loglik, (c > 0).astype(float)))
  if samples.reward is not None:
    out["kendall_tau/reward"] = M.nanmean(
        [M.kendall_tau(s, r) for s, r in zip(samples.loglik, samples.reward)])
  out["finished"] = float(samples.finished.mean())
  out["mean_length"] = float(samples.lengths.mean())
  if samples.turns is not None:
    out["turn_rate"] = float((samples.turns > 0).mean())
    out["mean_turns"] = float(samples.turns.mean())
  return out


def evaluate(model, tokenizer, problems: Sequence[dict], *, k: int, temperature: float,
             rng, **kwargs) -> dict[str, float]:
  """`summarize(collect(...))`: pass@1, pass@k, maj@k, best_of_k (policy
  log-likelihood; and /reward with rewards), greedy accuracy and the
  likelihood-vs-correctness ranking diagnostics. `kwargs` go to `collect`
  (task, rewards, max_new_tokens, top_p, verifier, prompt_fn, batch_size...)."""
  return summarize(collect(model, tokenizer, problems, k=k, temperature=temperature,
                           rng=rng, **kwargs))


def pass_at_k_curve(correct_pn, ks: Sequence[int] | None = None) -> dict[int, float]:
  """Mean unbiased pass@k for k = 1..N (or `ks`) from [P, N] correctness
  (e.g. `EvalSamples.correct`), for `plot_pass_at_k`."""
  return M.pass_at_k_curve(correct_pn, ks)


def format_table(rows: dict[str, dict[str, Any]], columns: Sequence[str],
                 headers: Sequence[str] | None = None) -> str:
  """A plain-text table: one row per label, `columns` looked up in each
  row's metrics ("-" when missing or None)."""
  headers = list(headers or columns)
  cells = [["stage", *headers]]
  for label, metrics in rows.items():
    row = [label]
    for col in columns:
      v = metrics.get(col) if isinstance(metrics, dict) else None
      row.append("-" if v is None or (isinstance(v, float) and np.isnan(v))
                 else f"{v:.3f}" if isinstance(v, float) else str(v))
    cells.append(row)
  widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)
