"""Self-improvement: verified samples of the current policy become its
training data (stages "star" and "iterative_dpo"). It sits above `train`
and `inference` and uses their public names: sampling and verification from
`inference.collect`, training from `train.fit`.

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
from typing import TYPE_CHECKING

import jax
import numpy as np

from rankjax import envs, rewards as rewards_lib
from rankjax.errors import UserInputError
from rankjax.inference import collect
from rankjax.train import fit

if TYPE_CHECKING:
  from rankjax.run import Run

log = logging.getLogger("rankjax.improve")


def _train_prompts(run: Run, iteration: int) -> list[dict]:
  """A seeded slice of the task's training problems for this iteration."""
  cfg = run.cfg
  records = run.task.records("train")
  if not records:
    raise UserInputError(f"self-improvement needs training problems; task {run.task.name!r} "
                         "has none")
  n = min(cfg.self_improve.num_prompts, len(records))
  idx = np.random.default_rng([cfg.seed, 11, iteration]).choice(len(records), n, replace=False)
  return [records[i] for i in idx]


def _sample(run: Run, problems, iteration: int):
  """K samples per problem with the run's sampling knobs (`cfg.sample`, at
  the eval temperature), verified like evaluation verifies; with `cfg.env`,
  whole multi-turn transcripts (the environment's observations become part
  of the training text, as in tool-use demonstrations)."""
  cfg = run.cfg
  verifier = rewards_lib.verifier(run.task, cfg.grpo.rewards,
                                  threshold=cfg.eval.pass_threshold)
  return collect(run.model, run.tokenizer, problems, k=cfg.self_improve.num_samples,
                 temperature=cfg.eval.temperature, max_new_tokens=cfg.sample.max_new_tokens,
                 top_k=cfg.sample.top_k, top_p=cfg.sample.top_p, min_p=cfg.sample.min_p,
                 rng=jax.random.key(cfg.seed * 1000 + 17 + iteration), greedy=False,
                 task=run.task, verifier=verifier,
                 env=envs.from_config(cfg.env, run.tokenizer, problems))


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


def _iterate(run: Run, stage: str, make_rows, train_stage: str) -> None:
  cfg = run.cfg
  base = run.model
  history = []
  for it in range(1, cfg.self_improve.iterations + 1):
    problems = _train_prompts(run, it)
    samples = _sample(run, problems, it)
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


def stage_star(run: Run) -> None:
  """STaR / ReST-EM: SFT on the policy's own verified samples, repeated."""
  _iterate(run, "star", verified_records, "sft")


def stage_iterative_dpo(run: Run) -> None:
  """Iterative DPO on verifier-ranked pairs of the current policy's samples."""
  _iterate(run, "iterative_dpo", preference_pairs, "dpo")

