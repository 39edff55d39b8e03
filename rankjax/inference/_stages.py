"""Pipeline stages "eval" and "rerank" (`rankjax.run` lists them).

eval    evaluates `run.model` on `cfg.eval.num_problems` held-out problems
        with `cfg.eval.num_samples` samples each, and stores the metrics in
        `run.summary[label]` (merged into what the training stage put there),
        its pass@k curve in `run.summary["pass_at_k_curves"][label]`, and the
        label in the ordered list `run.summary["evaluated"]`.
rerank  best-of-N / majority / reward-weighted vote, and soft best-of-N
        (resampling by softmax(r / β) of the training reward r, at the
        training objective's β: test-time sampling from the target
        π·exp(r/β) that KL-regularised training tilts toward) on the current model,
        writes `<workdir>/plots/pass_at_k.png` (and `reward_curve.png`,
        `ranking_curve.png` when metrics.jsonl has reward / ranking
        telemetry), and prints the comparison table
        of every evaluated stage.

The label of an eval is the last training stage that precedes it in
`cfg.pipeline` ("base" if none): the n-th eval of a run is the n-th "eval"
in the pipeline, n counted by `run.summary["evaluated"]` (reranks likewise,
by `run.summary["reranked"]`). So
pipeline=("eval", "sft", "eval", "grpo", "eval") gives base, sft, grpo. A
stage that appears twice keeps the later evaluation's metrics.

Every run evaluates the same problems (the task's held-out records) with the
same sampling key, so the stages are compared on paired samples. A sample
is correct when the task's verifier accepts it (a task without one: when
the first reward function gives at least `eval.pass_threshold`). Samples
are also scored with the run's rewards (`eval_rewards`) for best-of-N and
reward-weighted votes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import jax

from rankjax import envs, rewards as rewards_lib
from rankjax.config import stage_key
from rankjax.inference import _metrics as M
from rankjax.inference._evaluate import collect, format_table, pass_at_k_curve, summarize
from rankjax.inference._plots import (plot_pass_at_k, plot_ranking_curve, plot_reward_curve,
                                      ranking_keys, read_metrics, reward_keys)

if TYPE_CHECKING:
  from rankjax.run import Run

NON_TRAINING_STAGES = ("generate", "eval", "rerank")
_EVAL_SEED_OFFSET = 7919  # the eval sampling key differs from the training seed's


def eval_label(pipeline, evals_done: int, stage: str = "eval") -> str:
  """The label of the (evals_done + 1)-th `stage` ("eval" or "rerank") of
  `pipeline`: the last training stage before it, or "base"."""
  positions = [i for i, s in enumerate(pipeline) if s == stage]
  end = positions[evals_done] if evals_done < len(positions) else len(pipeline)
  for i in reversed(range(end)):
    if pipeline[i] not in NON_TRAINING_STAGES:
      return stage_key(tuple(pipeline), i)  # "sft_2" for a second sft
  return "base"


def eval_rewards(run: Run, problems) -> tuple[list, list, float]:
  """(rewards, target rewards, correct weight), each reward built once.

  rewards: the run's rewards for best-of-N and reward-weighted votes: the
    GRPO reward list without "correct" (the verifier is what pass@k
    counts), plus the reward model when a stage trained one that GRPO does
    not list.
  target rewards, correct weight: the GRPO reward itself, as its rewards
    other than "correct" and the weight of "correct"; soft best-of-N
    resamples by what training optimises. Without an extra reward model
    it is the same list as `rewards` (so `collect` scores it once).
  """
  g = run.cfg.grpo
  weights = g.reward_weights or (1.0,) * len(g.rewards)
  correct = float(sum(w for n, w in zip(g.rewards, weights) if n == "correct"))
  named = [(n, w) for n, w in zip(g.rewards, weights) if n != "correct"]
  build = lambda names, ws: rewards_lib.from_names(
      names, ws, task=run.task, tokenizer=run.tokenizer, records=problems,
      reward_model=run.reward_model) if names else []
  target = build([n for n, _ in named], [w for _, w in named])
  if run.reward_model is not None and "rm" not in g.rewards:
    return target + build(["rm"], [1.0]), target, correct
  return target, target, correct


def tilt_beta(cfg) -> float:
  """β of soft best-of-N: `eval.tilt_beta`, else GRPO's listwise β."""
  return cfg.eval.tilt_beta or cfg.grpo.listwise_beta


def _collect(run: Run):
  cfg = run.cfg
  verifier = rewards_lib.verifier(run.task, cfg.grpo.rewards,
                                  threshold=cfg.eval.pass_threshold)
  problems = run.task.eval_records(cfg.eval.num_problems)
  rewards, target, correct_weight = eval_rewards(run, problems)
  return collect(run.model, run.tokenizer, problems, k=cfg.eval.num_samples,
                 temperature=cfg.eval.temperature,
                 rng=jax.random.key(cfg.seed + _EVAL_SEED_OFFSET), task=run.task,
                 verifier=verifier, rewards=rewards,
                 max_new_tokens=cfg.sample.max_new_tokens, top_k=cfg.sample.top_k,
                 top_p=cfg.sample.top_p, min_p=cfg.sample.min_p, target_rewards=target,
                 target_correct_weight=correct_weight,
                 env=envs.from_config(cfg.env, run.tokenizer, problems))


def _json_safe(metrics: dict) -> dict:
  return {k: M.as_float(v) if isinstance(v, float) else v for k, v in metrics.items()}


def table_columns(k: int) -> tuple[list[str], list[str]]:
  """(metric keys, headers) of the comparison table."""
  return (["pass@1", f"maj@{k}", f"pass@{k}", f"best_of_{k}", f"soft_best_of_{k}"],
          ["pass@1", f"maj@{k}", f"pass@{k}", f"best-of-{k}", f"soft-best-of-{k}"])


def stage_eval(run: Run) -> None:
  """Evaluate the current model; see the module docstring."""
  evaluated = run.summary.setdefault("evaluated", [])
  label = eval_label(run.cfg.pipeline, len(evaluated))
  samples = _collect(run)
  metrics = _json_safe(summarize(samples, tilt_beta=tilt_beta(run.cfg)))
  entry = run.summary.get(label)
  run.summary[label] = {**(entry if isinstance(entry, dict) else {}), **metrics}
  run.summary.setdefault("pass_at_k_curves", {})[label] = {
      str(k): v for k, v in pass_at_k_curve(samples.correct).items()}
  evaluated.append(label)
  k = samples.k
  keys = [*table_columns(k)[0], f"pass_gap@{k}", "greedy", "kendall_tau", "ndcg"]
  if "turn_rate" in metrics:
    keys.append("turn_rate")
  print(f"eval [{label}] on {metrics['num_problems']} problems, k={k}:")
  print(format_table({label: metrics}, keys))


def stage_rerank(run: Run) -> None:
  """Rerank on the current model, write plots, print the comparison."""
  evaluated = run.summary.get("evaluated", [])
  reranked = run.summary.setdefault("reranked", [])
  label = eval_label(run.cfg.pipeline, len(reranked), stage="rerank")
  reranked.append(label)
  samples = _collect(run)
  k = samples.k
  metrics = summarize(samples, tilt_beta=tilt_beta(run.cfg))
  ns = list(range(1, k + 1))
  curves_n = {"loglik": M.best_of_n_curve(samples.loglik, samples.correct > 0, ns)}
  if samples.reward is not None:
    curves_n["reward"] = M.best_of_n_curve(samples.reward, samples.correct > 0, ns)
  curve_k = pass_at_k_curve(samples.correct)
  result = _json_safe(metrics)
  result["model"] = label
  result["best_of_n_curves"] = {name: {str(n): v for n, v in c.items()}
                                for name, c in curves_n.items()}
  result["pass_at_k_curve"] = {str(n): v for n, v in curve_k.items()}
  run.summary["rerank"] = result

  plots = Path(run.workdir) / "plots"
  lines = dict(run.summary.get("pass_at_k_curves") or {f"{label} pass@k": curve_k})
  for name, curve in curves_n.items():
    lines[f"{label} best-of-n ({name})"] = curve
  written = {"pass_at_k": str(plot_pass_at_k(lines, plots / "pass_at_k.png"))}
  metrics_path = Path(run.workdir) / "metrics.jsonl"
  rows = read_metrics(metrics_path) if metrics_path.exists() else []
  if reward_keys(rows):
    plot_reward_curve(metrics_path, plots / "reward_curve.png")
    written["reward_curve"] = str(plots / "reward_curve.png")
  if ranking_keys(rows):
    plot_ranking_curve(metrics_path, plots / "ranking_curve.png")
    written["ranking_curve"] = str(plots / "ranking_curve.png")
  run.summary["plots"] = written

  rows = {name: run.summary[name] for name in dict.fromkeys(evaluated)
          if isinstance(run.summary.get(name), dict)}
  rows[f"rerank ({label})"] = result
  keys, headers = table_columns(k)
  if samples.reward is not None:
    keys += [f"best_of_{k}/reward", f"weighted_vote@{k}/reward"]
    headers += [f"best-of-{k} (reward)", f"reward-vote@{k}"]
  print(f"rerank: N={k} samples on {metrics['num_problems']} problems; plots in {plots}")
  print(format_table(rows, keys, headers))
