"""Self-improvement: verified samples of the current policy become its
training data (stages "star" and "iterative_dpo").

STaR (Zelikman et al. 2022, arXiv 2203.14465) / ReST-EM (Singh et al. 2023,
arXiv 2312.06585): for I iterations, sample K completions per training
prompt, keep the verified-correct ones (deduplicated), and fine-tune on them
(from the base model each iteration when `restart_from_base`, as ReST-EM
does; otherwise continuing).

Iterative DPO: for I iterations, sample K completions per prompt, pair a
verified-correct completion (chosen) with an incorrect one (rejected) of the
same prompt, and run DPO on the pairs with the current policy as reference.
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from rankjax import run as run_lib
from rankjax.inference._evaluate import collect

log = logging.getLogger("rankjax.inference")


def _train_prompts(run: run_lib.Run, iteration: int) -> tuple[list[dict], dict]:
  """A seeded slice of training problems for this iteration + verify kwargs."""
  from rankjax.train import _data
  from rankjax.inference._stages import uses_chat
  cfg = run.cfg
  records, _ = _data._task_records(cfg, "train")
  if not records:
    raise ValueError("self-improvement needs training problems (data.source arithmetic/gsm8k)")
  n = min(cfg.self_improve.num_prompts, len(records))
  idx = np.random.default_rng([cfg.seed, 11, iteration]).choice(len(records), n, replace=False)
  kw = {"cot": cfg.data.cot}
  if cfg.data.source == "gsm8k":
    from rankjax.data import tasks
    kw = {"verifier": tasks.verify_numeric, "extract": tasks.extract_gsm8k_answer,
          "chat": uses_chat(cfg)}
  return [records[i] for i in idx], kw


def _sample(run: run_lib.Run, problems, kw, iteration: int):
  cfg = run.cfg
  return collect(run.model, run.tokenizer, problems, k=cfg.self_improve.num_samples,
                 temperature=cfg.eval.temperature, max_new_tokens=cfg.sample.max_new_tokens,
                 rng=jax.random.key(cfg.seed * 1000 + 17 + iteration), greedy=False, **kw)


def verified_records(problems, samples) -> list[dict]:
  """Prompt/completion rows of the verified-correct samples, deduplicated."""
  rows, seen = [], set()
  for p, texts, ok in zip(problems, samples.texts, samples.correct):
    for text, c in zip(texts, ok):
      if c >= 1.0 and (p["prompt"], text) not in seen:
        seen.add((p["prompt"], text))
        rows.append({"prompt": p["prompt"], "completion": text})
  return rows


def preference_pairs(problems, samples) -> list[dict]:
  """One {prompt, chosen, rejected} per prompt that has both a correct and an
  incorrect sample: the most likely correct vs the most likely incorrect."""
  rows = []
  for p, texts, ok, ll in zip(problems, samples.texts, samples.correct, samples.loglik):
    good = [i for i in range(len(texts)) if ok[i] >= 1.0]
    bad = [i for i in range(len(texts)) if ok[i] < 1.0]
    if good and bad:
      c = max(good, key=lambda i: ll[i])
      r = max(bad, key=lambda i: ll[i])
      rows.append({"prompt": p["prompt"], "chosen": texts[c], "rejected": texts[r]})
  return rows


def _iterate(run: run_lib.Run, stage: str, make_rows, train_stage: str) -> None:
  from rankjax.train import fit
  cfg = run.cfg
  base = run.model
  history = []
  for it in range(1, cfg.self_improve.iterations + 1):
    problems, kw = _train_prompts(run, it)
    samples = _sample(run, problems, kw, it)
    rows = make_rows(problems, samples)
    accuracy = float(np.mean(samples.correct))
    print(f"{stage} iteration {it}: sample accuracy {accuracy:.3f}, {len(rows)} training rows")
    entry = {"iteration": it, "sample_accuracy": accuracy, "rows": len(rows)}
    if len(rows) < cfg.data.batch_size:
      log.warning("%s iteration %d: only %d rows (< one batch of %d); stopping early",
                  stage, it, len(rows), cfg.data.batch_size)
      history.append(entry)
      break
    start = base if (stage == "star" and cfg.self_improve.restart_from_base) else run.model
    model, summary = fit(run, train_stage, start, cfg.self_improve.train_steps, records=rows,
                         name=f"{stage}_{train_stage}_{it}")
    run.model = model
    entry["train_loss"] = summary.get("loss")
    history.append(entry)
    if run.stop_requested():
      break
  run.summary[stage] = {"iterations": history}


def stage_star(run: run_lib.Run) -> None:
  """STaR / ReST-EM: SFT on the policy's own verified samples, repeated."""
  _iterate(run, "star", verified_records, "sft")


def stage_iterative_dpo(run: run_lib.Run) -> None:
  """Iterative DPO on verifier-ranked pairs of the current policy's samples."""
  _iterate(run, "iterative_dpo", preference_pairs, "dpo")


run_lib.register("star", stage_star)
run_lib.register("iterative_dpo", stage_iterative_dpo)
