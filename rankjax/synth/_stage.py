"""The "synthesize" stage: grow a pool of examples with the model's own
proposals, keeping only the novel, well-formed and verified ones.

One round:

  propose   `synth.proposals` prompts, each `synth.header` + `synth.shots`
            random pool records (`synth.show`: any, or the newest round's),
            one per line (`Task.render_record`: JSON
            by default, "12+34= 12+34" for arithmetic); the model writes
            the next line: a new record (method "verified": prompt and completion,
            plus any reference column the task cannot compute itself;
            "self_instruct": a prompt only)
  filter    malformed (not a JSON object with those text fields), length
            (`min_chars`..`max_chars` of the prompt), format (`pattern`,
            and the tokenizer must encode it), held_out (one of the
            task's evaluation prompts), duplicate (the same prompt
            is in the pool), similar (ROUGE-L F1 to the pool >= `novelty`)
  verify    the reference comes from the task (`Task.reference`, e.g. the
            arithmetic expression evaluated) or, when the task cannot
            compute it, from the proposal's own columns; unverifiable: the
            task rejects the prompt. "verified" keeps the record when the
            task's verifier accepts its completion (carried out from the
            stated solution, `Task.complete`: arithmetic evaluates the
            proposal's expression); "self_instruct" samples
            `responses` answers with the model and keeps the most likely
            accepted one (no verifier: the most likely answer). Wrong: none
            accepted.
  grow      kept records join the pool (re-checked for duplicates and
            similarity against what this round already kept) and the
            output file.

`proposer_path` proposes with a pretrained model instead (OSS-Instruct's
teacher, e.g. an instruction-tuned GGUF file), as it is and with its own
tokenizer. `proposer_steps` > 0 first fine-tunes a copy of the model on the proposal
format over the current pool (k records in, one more out), each round
continuing from the last round's proposer, so a model trained from scratch
learns to continue the list; the pool's verified records teach it too. The
run's model is not changed.

Output, under <workdir>/synth/<stage>/: data.jsonl (TRL prompt/completion
rows, reference columns, and `provenance`: id, round, the ids of the pool
records shown, ROUGE-L to the pool, the verifier's score), state.json (each
finished round's filter counts). A killed run resumes at the first
unfinished round; rows of an unfinished round are dropped and redone, so
none is written twice; a SIGTERM stops within a round (after the current
chunk of proposals) and keeps nothing of it. Later stages train on the pool (`train_on`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import data, models, rewards as rewards_lib, sampling
from rankjax.data import tasks
from rankjax.errors import UserInputError
from rankjax.inference import collect
from rankjax.synth._rouge import NoveltyIndex
from rankjax.tokenizer import load_tokenizer
from rankjax.train import fit

if TYPE_CHECKING:
  from rankjax.run import Run

log = logging.getLogger("rankjax.synth")

# Every reason a proposal is dropped, in the order they are checked.
FILTERS = ("malformed", "length", "format", "held_out", "duplicate", "similar", "unverifiable",
           "wrong")
_CHUNK = 256  # proposals per sampler call (one progress line each)


@dataclasses.dataclass
class Pool:
  """The records proposals are drawn from and checked against."""
  ids: list[str]
  records: list[dict]
  rounds: list[int]  # the round that kept each record; 0: a seed
  prompts: set[str]
  novelty: NoveltyIndex
  # The task's evaluation prompts: a proposal equal to one is never kept,
  # so later stages are not measured on problems they trained on.
  held_out: set[str] = dataclasses.field(default_factory=set)

  @classmethod
  def of(cls, ids, records, unit, rounds=None, held_out=()) -> "Pool":
    pool = cls([], [], [], set(), NoveltyIndex(unit=unit),
               {_normal(p) for p in held_out if isinstance(p, str)})
    for i, r, rnd in zip(ids, records, rounds or [0] * len(records)):
      pool.add(i, r, rnd)
    return pool

  def add(self, id_: str, record: dict, rnd: int = 0) -> None:
    self.ids.append(id_)
    self.records.append(record)
    self.rounds.append(rnd)
    self.prompts.add(_normal(record["prompt"]))
    self.novelty.add(record["prompt"])


def _normal(text: str) -> str:
  return " ".join(text.split()).lower()


# -- seeds ----------------------------------------------------------------------


def read_seeds(cfg, task: tasks.Task) -> list[dict]:
  """The seed pool: `synth.seed_path` (JSON Lines) or the task's training
  records, the first `synth.num_seeds` (0: all). A seed needs a non-empty
  text `prompt` (and `completion` for method "verified"); a row without
  one, or an empty pool, is a UserInputError naming the file and line."""
  s = cfg.synth
  need = ("prompt", "completion") if s.method == "verified" else ("prompt",)
  if s.seed_path:
    source = data.open_source(s.seed_path)
    rows = [(source[i].record, source[i].location) for i in range(len(source))]
    where = s.seed_path
  else:
    rows = [(r, f"{task.name} training record {i}")
            for i, r in enumerate(task.records("train"))]
    where = f"task {task.name!r} training records"
  if s.num_seeds:
    rows = rows[:s.num_seeds]
  if not rows:
    raise UserInputError(f"synthesize: the seed pool is empty ({where}); give seeds with "
                         "synth.seed_path or a task with training records")
  for record, location in rows:
    if not isinstance(record, dict):
      raise UserInputError(f"synthesize: seed {location}: expected a JSON object, got "
                           f"{type(record).__name__}")
    for field in need:
      if not isinstance(record.get(field), str) or not record[field]:
        raise UserInputError(
            f"synthesize: seed {location}: field {field!r} must be non-empty text "
            f"(synth.method={s.method!r}); the row has {sorted(record)}")
  return [r for r, _ in rows]


def proposal_fields(method: str, seeds: list[dict], task: tasks.Task) -> tuple[str, ...]:
  """The columns a proposal writes: prompt (+ the task's solution fields for
  "verified": the completion, or e.g. arithmetic's expression), plus the seeds' reference columns when the task cannot compute them from
  a prompt (then the proposal states its own reference and the verifier
  checks the completion against it)."""
  fields = ("prompt", *task.solution_fields) if method == "verified" else ("prompt",)
  computes = any(task.reference(r["prompt"]) for r in seeds)
  extra = () if computes else tuple(task.columns(seeds))
  return fields + tuple(c for c in extra if c not in fields and c != "provenance")


# -- proposing -------------------------------------------------------------------


def proposal_text(header: str, shown: list[dict], fields, task: tasks.Task) -> str:
  """`header`, then one line per shown record (`Task.render_record`: a
  JSON object by default); the model writes the next line."""
  lines = [header] if header else []
  return "\n".join(lines + [task.render_record(r, fields) for r in shown]) + "\n"


def parse_proposal(text: str, fields, task: tasks.Task) -> dict | None:
  """The record a proposal wrote: its first line read back by
  `Task.parse_record`, or None."""
  return task.parse_record(text.split("\n", 1)[0], fields)


def _pick(rng: np.random.Generator, indices, k: int) -> list[int]:
  """`k` of `indices` (pool positions) at random, without repeats."""
  return [indices[i] for i in rng.choice(len(indices), min(k, len(indices)), replace=False)]


def showable(pool: Pool, show: str, shots: int) -> list[int]:
  """The pool records a round's proposals show: all of them ("pool"), or
  ("latest") those the newest round kept, the newest one that kept at least
  `shots` (the seeds when none did), so each round grows from the last."""
  if show == "latest":
    for rnd in sorted(set(pool.rounds), reverse=True):
      idx = [i for i, r in enumerate(pool.rounds) if r == rnd]
      if len(idx) >= shots or rnd == 0:
        return idx
  return list(range(len(pool.records)))


def proposer_rows(pool: Pool, task: tasks.Task, *, shots: int, header: str, fields, n: int,
                  rng: np.random.Generator) -> list[dict]:
  """`n` SFT rows teaching the proposal format: k pool records shown, one
  more (not among them) as the completion."""
  rows = []
  for _ in range(n):
    idx = _pick(rng, range(len(pool.records)), shots + 1)
    shown, target = [pool.records[i] for i in idx[:-1]], pool.records[idx[-1]]
    rows.append({"prompt": proposal_text(header, shown, fields, task),
                 "completion": task.render_record(target, fields)})
  return rows


def load_proposer(run: Run):
  """(model, tokenizer) of `synth.proposer_path`, a pretrained proposer in
  the run's compute dtype; (run.model, run.tokenizer) without one."""
  path = run.cfg.synth.proposer_path
  if not path:
    return run.model, run.tokenizer
  m = run.cfg.model
  print(f"synthesize: proposals come from {path}")
  return (models.load(path, dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.dtype)),
          load_tokenizer(path))


def _proposer(run: Run, pool: Pool, fields, rnd: int, start):
  """The model that proposes in round `rnd`: `start` as it is, or `start`
  (the run's model in round 1, the last round's proposer after it)
  fine-tuned on the proposal format over the current pool. A finished
  round's proposer comes back from its checkpoint."""
  cfg, s = run.cfg, run.cfg.synth
  if not s.proposer_steps:
    return start
  rng = np.random.default_rng([cfg.seed, 41, rnd])
  rows = proposer_rows(pool, run.task, shots=s.shots, header=s.header, fields=fields,
                       n=min(s.proposer_steps * cfg.data.batch_size, 20000), rng=rng)
  longest = max(len(tasks.encode_prompt(run.tokenizer, r["prompt"] + r["completion"]))
                for r in rows) + 2
  # Proposal rows are longer than the task's: their own length limit, the
  # full row as completion-only loss.
  d = dataclasses.replace(cfg.data, max_length=max(longest, cfg.data.max_length),
                          max_prompt_length=max(longest, cfg.data.max_prompt_length),
                          packing=False, sft_noise=0.0)
  sub = dataclasses.replace(run, cfg=dataclasses.replace(
      cfg, data=d, sft=dataclasses.replace(cfg.sft, loss_mask="completion")))
  model, _ = fit(sub, "sft", start, s.proposer_steps, records=rows,
                 name=f"{run.stage_key or 'synthesize'}_proposer_{rnd}")
  return model


def _stop_ids(tokenizer) -> tuple[int, ...]:
  newline = tokenizer.encode("\n")
  return tuple(tokenizer.eos_ids) + (tuple(newline) if len(newline) == 1 else ())


def propose(model, tokenizer, texts: list[str], *, max_new_tokens: int, temperature: float,
            rng) -> list[str]:
  """The model's continuation of each proposal prompt (up to its first newline)."""
  prompts = [tasks.encode_prompt(tokenizer, t) for t in texts]
  scfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                 eos_token_ids=_stop_ids(tokenizer),
                                 pad_token_id=tokenizer.pad_id)
  out = sampling.generate(model, prompts, scfg, rng=rng)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  return [tokenizer.decode([int(t) for t in tokens[i, :lengths[i]]]).split("\n", 1)[0]
          for i in range(len(prompts))]


# -- filtering -------------------------------------------------------------------


@dataclasses.dataclass
class Candidate:
  record: dict
  shown: list[str]
  rouge_l: float = 0.0
  verified: float | None = None


def check_form(record: dict | None, pool: Pool, cfg, task: tasks.Task, tokenizer
               ) -> tuple[str | None, float]:
  """(the first filter that drops `record`, or None; its ROUGE-L F1 to the
  pool) over the checks that need no model: malformed .. similar."""
  s = cfg.synth
  if record is None:
    return "malformed", 0.0
  prompt = record["prompt"]
  if not s.min_chars <= len(prompt) <= s.max_chars:
    return "length", 0.0
  if s.pattern and not re.fullmatch(s.pattern, prompt):
    return "format", 0.0
  try:
    task.prompt_ids(record, tokenizer)
    if "completion" in record:
      tokenizer.encode(record["completion"])
  except Exception:  # pylint: disable=broad-except
    return "format", 0.0  # e.g. a character the tokenizer cannot encode
  normal = _normal(prompt)
  if normal in pool.held_out:
    return "held_out", 0.0
  if normal in pool.prompts:
    return "duplicate", 1.0
  score = pool.novelty.max_rouge_l(prompt)
  if score >= s.novelty:
    return "similar", score
  return None, score


def with_reference(record: dict, task: tasks.Task, method: str) -> dict | None:
  """`record` with the task's reference columns for its prompt and, for
  "verified", its completion carried out from the stated solution
  (`Task.complete`); None: the task rejects the prompt or the solution."""
  ref = task.reference(record["prompt"])
  if ref is None:
    return None
  record = {**record, **ref}
  return task.complete(record) if method == "verified" else record


def _verify_completions(cands: list[Candidate], verify) -> list[str | None]:
  out = []
  for c in cands:
    score = verify(c.record["completion"], c.record)
    c.verified = None if score is None else float(score)
    out.append("wrong" if score is not None and score < 1.0 else None)
  return out


def _respond(run: Run, cands: list[Candidate], verify, rng) -> list[str | None]:
  """self_instruct: sample answers and keep the most likely accepted one."""
  if not cands:
    return []
  cfg, s = run.cfg, run.cfg.synth
  samples = collect(run.model, run.tokenizer, [c.record for c in cands], k=s.responses,
                    temperature=s.temperature, rng=rng, task=run.task,
                    verifier=verify or (lambda text, record: None),
                    max_new_tokens=cfg.sample.max_new_tokens, greedy=False)
  out = []
  for c, texts, ok, ll in zip(cands, samples.texts, samples.correct, samples.loglik):
    scored = verify is not None
    good = [i for i in range(len(texts)) if (ok[i] >= 1.0 if scored else True)]
    if not good:
      out.append("wrong")
      continue
    best = max(good, key=lambda i: ll[i])
    c.record = {**c.record, "completion": texts[best]}
    c.verified = float(ok[best]) if scored else None
    out.append(None)
  return out


def _verifier(run: Run):
  """`(text, record) -> score or None`: the task's verifier, the run's first
  reward function for a task without one, or None when neither exists."""
  if run.task.has_verifier:
    return run.task.verify
  try:
    return rewards_lib.verifier(run.task, run.cfg.grpo.rewards,
                                threshold=run.cfg.eval.pass_threshold)
  except UserInputError:
    return None


# -- a round ---------------------------------------------------------------------


def run_round(run: Run, pool: Pool, fields, rnd: int, model, tokenizer
              ) -> tuple[list[dict], dict] | None:
  """One round of propose -> filter -> verify -> grow with the proposer
  `model` and its `tokenizer`; returns the new output rows and the
  round's counts, or None when a stop was requested (SIGTERM) before the
  round finished: nothing of it is kept, and a resumed run redoes it.
  Proposals must still encode with the run's tokenizer (the `format`
  filter): the run's model trains on them."""
  cfg, s = run.cfg, run.cfg.synth
  rng = np.random.default_rng([cfg.seed, 43, rnd])
  key = jax.random.key(cfg.seed * 7919 + rnd)
  counts = dict.fromkeys(("proposed", *FILTERS, "kept"), 0)
  verify = _verifier(run)
  kept: list[dict] = []
  shown_from = showable(pool, s.show, s.shots)
  start = time.perf_counter()
  for lo in range(0, s.proposals, _CHUNK):
    n = min(_CHUNK, s.proposals - lo)
    picks = [_pick(rng, shown_from, s.shots) for _ in range(n)]
    texts = [proposal_text(s.header, [pool.records[i] for i in p], fields, run.task)
             for p in picks]
    key, sub = jax.random.split(key)
    outs = propose(model, tokenizer, texts, max_new_tokens=s.max_new_tokens,
                   temperature=s.temperature, rng=sub)
    counts["proposed"] += n
    cands = []
    for text, p in zip(outs, picks):
      record = parse_proposal(text, fields, run.task)
      reason, score = check_form(record, pool, cfg, run.task, run.tokenizer)
      if reason is None:
        record = with_reference(record, run.task, s.method)
        reason = "unverifiable" if record is None else None
      if reason:
        counts[reason] += 1
      else:
        cands.append(Candidate(record, [pool.ids[i] for i in p], rouge_l=score))
    if s.method == "verified":
      reasons = _verify_completions(cands, verify) if verify else [None] * len(cands)
    else:
      key, sub = jax.random.split(key)
      reasons = _respond(run, cands, verify, sub)
    for c, reason in zip(cands, reasons):
      if reason is None:  # against what this round has kept so far
        reason, c.rouge_l = check_form(c.record, pool, cfg, run.task, run.tokenizer)
      if reason:
        counts[reason] += 1
        continue
      row_id = f"r{rnd}-{counts['kept']}"
      counts["kept"] += 1
      row = {**c.record, "provenance": {
          "id": row_id, "round": rnd, "method": s.method, "shown": c.shown,
          "rouge_l": round(c.rouge_l, 4), "verified": c.verified}}
      kept.append(row)
      pool.add(row_id, c.record, rnd)
    elapsed = time.perf_counter() - start
    done = lo + n
    print(f"synthesize  round {rnd}/{s.rounds}  {done}/{s.proposals} proposals  "
          f"kept {counts['kept']}  pool {len(pool.records)}  "
          f"ETA {elapsed / done * (s.proposals - done):.0f}s", flush=True)
    if done < s.proposals and run.stop_requested():
      return None
  return kept, counts


# -- the stage -------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _clean(row: dict) -> dict:
  return {k: v for k, v in row.items() if k != "provenance"}


def format_counts(rounds: list[dict]) -> str:
  """The filter table: one column per round and a total."""
  names = ("proposed", *FILTERS, "kept")
  head = "filter        " + "".join(f"{'round ' + str(i + 1):>10}" for i in range(len(rounds)))
  lines = [head + f"{'total':>10}"]
  for n in names:
    vals = [r.get(n, 0) for r in rounds]  # a filter newer than a resumed round's state: 0
    lines.append(f"{n:<14}" + "".join(f"{v:>10}" for v in vals) + f"{sum(vals):>10}")
  return "\n".join(lines)


def stage_synthesize(run: Run) -> None:
  """Synthesize verified data from a seed pool; see the module docstring."""
  cfg, s = run.cfg, run.cfg.synth
  key = run.stage_key or "synthesize"
  seeds = read_seeds(cfg, run.task)
  fields = proposal_fields(s.method, seeds, run.task)
  out_dir = Path(run.workdir) / "synth" / key
  out_dir.mkdir(parents=True, exist_ok=True)
  rows_path, state_path = out_dir / "data.jsonl", out_dir / "state.json"
  state: dict[str, Any] = (json.loads(state_path.read_text()) if state_path.exists()
                           else {"rounds": []})
  done = len(state["rounds"])
  rows = ([json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
          if rows_path.exists() else [])
  # Rows of a round that never finished are redone, not kept twice.
  rows = [r for r in rows if r["provenance"]["round"] <= done]
  if done:
    print(f"synthesize: resumed after round {done} with {len(rows)} rows")
  # Seeds show their solution the way proposals state it (e.g. arithmetic's expression).
  seed_records = [{**{k: v for k, v in r.items() if k != "provenance"},
                   **(run.task.solution(r) if s.method == "verified" else {})} for r in seeds]
  pool = Pool.of([f"seed-{i}" for i in range(len(seeds))] + [r["provenance"]["id"] for r in rows],
                 seed_records + [_clean(r) for r in rows], s.rouge_tokens,
                 [0] * len(seeds) + [r["provenance"]["round"] for r in rows],
                 [r.get("prompt") for r in run.task.records("eval")])
  if done < s.rounds:
    proposer, proposer_tokenizer = load_proposer(run)
    # Each round's proposer continues from the last round's (from its
    # checkpoint when resuming).
    if done:
      proposer = _proposer(run, pool, fields, done, proposer)
    for rnd in range(done + 1, s.rounds + 1):
      proposer = _proposer(run, pool, fields, rnd, proposer)
      result = run_round(run, pool, fields, rnd, proposer, proposer_tokenizer)
      if result is None:
        print(f"synthesize: stopped in round {rnd} (SIGTERM); a resumed run redoes it")
        break
      new, counts = result
      rows += new
      _write_atomic(rows_path, "".join(json.dumps(r) + "\n" for r in rows))
      state["rounds"].append(counts)
      _write_atomic(state_path, json.dumps(state, indent=2))
      if run.stop_requested():
        break
  print(f"synthesize: {len(rows)} records from {len(seeds)} seeds in "
        f"{len(state['rounds'])} rounds -> {rows_path}")
  if state["rounds"]:
    print(format_counts(state["rounds"]))
  totals = {n: sum(r.get(n, 0) for r in state["rounds"]) for n in ("proposed", *FILTERS, "kept")}
  run.summary[key] = {"seeds": len(seeds), "synthesized": len(rows), "output": str(rows_path),
                      "rounds": state["rounds"], "removed": {n: totals[n] for n in FILTERS},
                      "proposed": totals["proposed"], "kept": totals["kept"]}
  train = [_clean(r) for r in rows] if s.train_on == "synthesized" else (
      seed_records + [_clean(r) for r in rows])
  if not train:
    raise UserInputError("synthesize: no record was kept and synth.train_on='synthesized' "
                         "leaves the later stages nothing to train on")
  run.task = run.task.with_train_records(train)
