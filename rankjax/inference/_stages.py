"""Pipeline stages "eval" and "rerank" (registered with `rankjax.run`).

eval    evaluates `run.model` on `cfg.eval.num_problems` held-out problems
        with `cfg.eval.num_samples` samples each, and stores the metrics in
        `run.summary[label]` (merged into what the training stage put there),
        its pass@k curve in `run.summary["pass_at_k_curves"][label]`, and the
        label in the ordered list `run.summary["evaluated"]`.
rerank  best-of-N / majority / reward-weighted vote on the current model,
        writes `<workdir>/plots/pass_at_k.png` (and `reward_curve.png` when
        metrics.jsonl has reward metrics), and prints the comparison table
        of every evaluated stage.

The label of an eval is the last training stage that precedes it in
`cfg.pipeline` ("base" if none): the n-th eval of a run is the n-th "eval"
in the pipeline, n counted by `run.summary["evaluated"]` (reranks likewise,
by `run.summary["reranked"]`). So
pipeline=("eval", "sft", "eval", "grpo", "eval") gives base, sft, grpo. A
stage that appears twice keeps the later evaluation's metrics.

Every run evaluates the same problems with the same sampling key, so the
stages are compared on paired samples. A reward model is used when a stage
has set `run.reward_model` (a scalar-head `Transformer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from rankjax import run as run_lib
from rankjax.data import tasks
from rankjax.inference import _metrics as M
from rankjax.inference._evaluate import collect, format_table, pass_at_k_curve, summarize
from rankjax.inference._plots import plot_pass_at_k, plot_reward_curve, read_metrics, reward_keys

NON_TRAINING_STAGES = ("generate", "eval", "rerank")
_EVAL_SEED_OFFSET = 7919  # the eval sampling key differs from the training seed's


def eval_label(pipeline, evals_done: int, stage: str = "eval") -> str:
  """The label of the (evals_done + 1)-th `stage` ("eval" or "rerank") of
  `pipeline`: the last training stage before it, or "base"."""
  positions = [i for i, s in enumerate(pipeline) if s == stage]
  end = positions[evals_done] if evals_done < len(positions) else len(pipeline)
  for stage in reversed(tuple(pipeline[:end])):
    if stage not in NON_TRAINING_STAGES:
      return stage
  return "base"


def uses_chat(cfg) -> bool:
  """GSM8K prompts go through the chat template of a checkpoint's tokenizer
  (instruct models); the built-in task's never do."""
  return cfg.data.source == "gsm8k" and bool(cfg.model.path or cfg.tokenizer.path)


def eval_problems(cfg) -> tuple[list[dict], dict[str, Any]]:
  """Held-out problems for `cfg.data.source` and the `collect` kwargs that
  verify them: the arithmetic test split, or GSM8K records from
  `data.eval_path` (else `data.path`)."""
  d = cfg.data
  if d.source == "arithmetic":
    task = tasks.ArithmeticTask(ops=d.ops, min_digits=d.min_digits, max_digits=d.max_digits,
                                cot=d.cot, seed=cfg.seed)
    return tasks.generate(task, "test", cfg.eval.num_problems), {"cot": d.cot}
  if d.source == "gsm8k":
    records = tasks.read_gsm8k(d.eval_path or d.path)[:cfg.eval.num_problems]
    return records, {"verifier": tasks.verify_numeric, "extract": tasks.extract_gsm8k_answer,
                     "chat": uses_chat(cfg)}
  raise ValueError(f"eval/rerank need a verifiable task (data.source 'arithmetic' or "
                   f"'gsm8k'), got {d.source!r}")


def _collect(run: run_lib.Run):
  cfg = run.cfg
  problems, verify_kw = eval_problems(cfg)
  return collect(run.model, run.tokenizer, problems, k=cfg.eval.num_samples,
                 temperature=cfg.eval.temperature,
                 rng=jax.random.key(cfg.seed + _EVAL_SEED_OFFSET),
                 reward_model=run.reward_model,
                 max_new_tokens=cfg.sample.max_new_tokens, top_k=cfg.sample.top_k,
                 top_p=cfg.sample.top_p, min_p=cfg.sample.min_p, **verify_kw)


def _json_safe(metrics: dict) -> dict:
  return {k: M.as_float(v) if isinstance(v, float) else v for k, v in metrics.items()}


def table_columns(k: int) -> tuple[list[str], list[str]]:
  """(metric keys, headers) of the comparison table."""
  return (["pass@1", f"maj@{k}", f"pass@{k}", f"best_of_{k}"],
          ["pass@1", f"maj@{k}", f"pass@{k}", f"best-of-{k}"])


def stage_eval(run: run_lib.Run) -> None:
  """Evaluate the current model; see the module docstring."""
  evaluated = run.summary.setdefault("evaluated", [])
  label = eval_label(run.cfg.pipeline, len(evaluated))
  samples = _collect(run)
  metrics = _json_safe(summarize(samples))
  entry = run.summary.get(label)
  run.summary[label] = {**(entry if isinstance(entry, dict) else {}), **metrics}
  run.summary.setdefault("pass_at_k_curves", {})[label] = {
      str(k): v for k, v in pass_at_k_curve(samples.correct).items()}
  evaluated.append(label)
  k = samples.k
  keys = [*table_columns(k)[0], "greedy", "kendall_tau", "ndcg"]
  print(f"eval [{label}] on {metrics['num_problems']} problems, k={k}:")
  print(format_table({label: metrics}, keys))


def stage_rerank(run: run_lib.Run) -> None:
  """Rerank on the current model, write plots, print the comparison."""
  evaluated = run.summary.get("evaluated", [])
  reranked = run.summary.setdefault("reranked", [])
  label = eval_label(run.cfg.pipeline, len(reranked), stage="rerank")
  reranked.append(label)
  samples = _collect(run)
  k = samples.k
  metrics = summarize(samples)
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
  if metrics_path.exists() and reward_keys(read_metrics(metrics_path)):
    plot_reward_curve(metrics_path, plots / "reward_curve.png")
    written["reward_curve"] = str(plots / "reward_curve.png")
  run.summary["plots"] = written

  rows = {name: run.summary[name] for name in dict.fromkeys(evaluated)
          if isinstance(run.summary.get(name), dict)}
  rows[f"rerank ({label})"] = result
  keys, headers = table_columns(k)
  if samples.reward is not None:
    keys += [f"best_of_{k}/reward", f"weighted_vote@{k}/reward"]
    headers += [f"best-of-{k} (RM)", f"RM-vote@{k}"]
  print(f"rerank: N={k} samples on {metrics['num_problems']} problems; plots in {plots}")
  print(format_table(rows, keys, headers))


run_lib.register("eval", stage_eval)
run_lib.register("rerank", stage_rerank)
