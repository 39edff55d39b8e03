"""Training data for the stages, from `cfg.data`, through `rankjax.data`.

Built-in tasks (arithmetic, GSM8K) give prompt/completion records with a
reference answer. SFT trains on them as they are. The preference stages
(rm, dpo, kto) need pairs, and build them deterministically:

  chosen   = the correct completion
  rejected = the same completion with its final answer replaced by a wrong
             one: the answer ± d, d drawn uniformly from 1..9 by a generator
             seeded with (seed, row index) — so the pair differs only where
             correctness is decided, and every run builds the same pairs.

KTO reads those pairs unpaired (chosen -> desirable, rejected ->
undesirable). User files (`source=jsonl|parquet|tfds`) are used as they
are; their format (detected from the keys) must suit the stage.
"""

from __future__ import annotations

import decimal
import logging

import numpy as np

from rankjax import data
from rankjax.config import Config
from rankjax.data import tasks

log = logging.getLogger("rankjax.train")

# Record formats each stage accepts (after `unpair` for kto).
STAGE_FORMATS = {
    "sft": (data.PROMPT_COMPLETION, data.LM),
    "rm": (data.PREFERENCE,),
    "dpo": (data.PREFERENCE,),
    "kto": (data.UNPAIRED_PREFERENCE,),
}
_PAIRED = ("rm", "dpo", "kto")
# Where the final answer starts in a built-in completion.
_ANSWER_MARKERS = {"gsm8k": "####", "arithmetic_cot": tasks.ANSWER_MARKER}


def wrong_answer(answer: str, rng: np.random.Generator) -> str:
  """answer ± d, d in 1..9 (decimals keep their digits: "2.5" -> "7.5")."""
  delta = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1)
  return str(decimal.Decimal(answer) + delta)


def corrupt_completion(completion: str, answer: str, marker: str | None,
                       rng: np.random.Generator) -> str:
  """The completion with its final answer wrong (text before the last
  `marker` kept; no marker: the completion is the answer)."""
  wrong = wrong_answer(answer, rng)
  if marker is None:
    return wrong
  head = completion.rsplit(marker, 1)[0]
  return f"{head}{marker} {wrong}"


def preference_records(records: list[dict], *, seed: int, marker: str | None) -> list[dict]:
  """Built-in records -> {prompt, chosen, rejected} (module docstring)."""
  out = []
  for i, r in enumerate(records):
    rng = np.random.default_rng([seed, i])
    out.append({"prompt": r["prompt"], "chosen": r["completion"],
                "rejected": corrupt_completion(r["completion"], r["answer"], marker, rng)})
  return out


def noisy_demonstrations(rows: list[dict], records: list[dict], fraction: float, *,
                         seed: int, marker: str | None) -> list[dict]:
  """`rows` with a seeded `fraction` of completions given a wrong final
  answer (`corrupt_completion`): imperfect demonstrations. SFT then imitates
  both modes; verifier-based RL and reranking have to pick the right one."""
  rng = np.random.default_rng([seed, 7])
  noisy = rng.random(len(rows)) < fraction
  out = []
  for i, (row, rec) in enumerate(zip(rows, records)):
    if noisy[i]:
      wrong = corrupt_completion(rec["completion"], rec["answer"], marker,
                                 np.random.default_rng([seed, 7, i]))
      row = dict(row, completion=wrong)
    out.append(row)
  return out


def _task_records(cfg: Config, split: str) -> tuple[list[dict], str | None]:
  d = cfg.data
  if d.source == "arithmetic":
    task = tasks.ArithmeticTask(ops=d.ops, min_digits=d.min_digits,
                                max_digits=d.max_digits, cot=d.cot, seed=cfg.seed)
    n = d.num_train if split == "train" else d.num_eval
    marker = _ANSWER_MARKERS["arithmetic_cot"] if d.cot else None
    return tasks.generate(task, "train" if split == "train" else "test", n), marker
  path = d.path if split == "train" else d.eval_path
  if not path:
    return [], _ANSWER_MARKERS["gsm8k"]
  records = tasks.read_gsm8k(path)
  return records[:d.num_train if split == "train" else d.num_eval], _ANSWER_MARKERS["gsm8k"]


def open_source(cfg: Config, stage: str, split: str):
  """The row source of `split` ("train" or "eval") for `stage`, or None
  when there is no eval data."""
  d = cfg.data
  if d.source in ("arithmetic", "gsm8k"):
    records, marker = _task_records(cfg, split)
    if not records:
      return None
    if stage in _PAIRED:
      rows = preference_records(records, seed=cfg.seed, marker=marker)
    else:
      rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in records]
      if d.sft_noise and split == "train":
        rows = noisy_demonstrations(rows, records, d.sft_noise, seed=cfg.seed, marker=marker)
    return data.RecordSource(rows, name=f"{d.source}:{split}")
  if d.source == "tfds":
    split_name = "train" if split == "train" else "test"
    try:
      return data.load_tfds(d.tfds_name, data_dir=d.path or None, split=split_name)
    except Exception:  # pylint: disable=broad-except
      if split == "train":
        raise
      return None
  path = d.path if split == "train" else d.eval_path
  return data.open_source(path) if path else None


def pipeline_config(cfg: Config, stage: str, *, train: bool, unpair: bool,
                    one_pass: bool = False) -> data.PipelineConfig:
  """Training: shuffled, repeating, full batches. Evaluation: one ordered
  pass of full batches. `one_pass`: one ordered pass keeping the last
  partial batch (precomputing reference log-probs for every row)."""
  d = cfg.data
  loss_mask = cfg.sft.loss_mask if stage == "sft" else "completion"
  return data.PipelineConfig(
      global_batch_size=d.batch_size, max_length=d.max_length, seed=cfg.seed,
      shuffle=d.shuffle and train and not one_pass,
      num_epochs=1 if one_pass or not train else None,
      truncation=d.truncation, on_bad_row=d.on_bad_row,
      packing=d.packing and stage == "sft" and train,
      completion_only_loss=loss_mask != "all",
      assistant_only_loss=loss_mask == "assistant", unpair=unpair,
      drop_remainder=not one_pass, **data.process_shard())


def _first_format(source) -> str | None:
  for i in range(min(len(source), 100)):
    try:
      record = source[i].record
    except data.DataError:
      continue
    if isinstance(record, dict):
      return data.detect_format(record)
  return None


def build_pipeline(cfg: Config, stage: str, tokenizer, split: str = "train", *,
                   one_pass: bool = False, records: list[dict] | None = None):
  """The `rankjax.data.Pipeline` of `stage` for `split` ("train"/"eval";
  None: no eval data). `one_pass`: see `pipeline_config`.

  Raises ValueError when the data's format does not suit the stage.
  """
  # `records`: rows made in-process (self-improvement loops) instead of cfg.data.
  if records is not None:
    source = data.RecordSource(records, name=f"{stage}:generated") if split == "train" else None
  else:
    source = open_source(cfg, stage, split)
  if source is None:
    return None
  unpair = stage == "kto" and _first_format(source) == data.PREFERENCE
  pipe_cfg = pipeline_config(cfg, stage, train=split == "train", unpair=unpair,
                             one_pass=one_pass)
  try:
    pipe = data.build_pipeline(source, tokenizer, pipe_cfg)
  except data.DataError as e:
    if split == "train":
      raise
    log.warning("%s: no evaluation batches (%s); skipping evaluation", stage, e)
    return None
  if pipe.example_format not in STAGE_FORMATS[stage]:
    hint = (" (kto also reads preference rows, unpaired)" if stage == "kto" else "")
    raise ValueError(f"stage {stage!r} trains on {' or '.join(STAGE_FORMATS[stage])} "
                     f"records{hint}; {source!r} holds {pipe.example_format} records")
  return pipe


def check_divisible(cfg: Config, mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if cfg.data.batch_size % (shards * cfg.optim.grad_accum_steps):
    raise ValueError(
        f"data.batch_size={cfg.data.batch_size} must be divisible by data x fsdp "
        f"({shards}) x optim.grad_accum_steps ({cfg.optim.grad_accum_steps})")
