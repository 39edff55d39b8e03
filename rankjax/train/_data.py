"""Training data for the offline stages, from the run's Task, through
`rankjax.data`.

The task gives the rows (`Task.training_source`): built-in tasks give their
demonstrations to SFT and, to the preference stages, pairs of a
demonstration and the same completion with a wrong final answer
(`tasks.preference_records`) and, to the listwise stage, ranked lists
(`tasks.ranked_records`); a user's files are read as they are, and
their format (detected from the keys) must suit the stage. KTO reads
preference pairs unpaired (chosen -> desirable, rejected -> undesirable).
"""

from __future__ import annotations

import logging

from rankjax import data
from rankjax.config import Config
from rankjax.data import tasks as tasks_lib
from rankjax.errors import UserInputError

log = logging.getLogger("rankjax.train")

def open_source(cfg: Config, task: tasks_lib.Task, stage: str, formats, split: str):
  """The row source of `split` ("train" or "eval") for a stage that trains
  on `formats`, or None when there is no eval data."""
  paired = data.PROMPT_COMPLETION not in formats
  kwargs = {"list_size": cfg.listwise.list_size} if data.RANKED in formats else {}
  return task.training_source(split, paired=paired, seed=cfg.seed,
                              noise=0.0 if paired else cfg.data.sft_noise, **kwargs)


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
      drop_remainder=not one_pass, list_size=cfg.listwise.list_size,
      **data.process_shard())


def _first_format(source) -> str | None:
  for i in range(min(len(source), 100)):
    try:
      record = source[i].record
    except data.DataError:
      continue
    if isinstance(record, dict):
      return data.detect_format(record)
  return None


def build_pipeline(cfg: Config, task: tasks_lib.Task, stage: str, formats, tokenizer,
                   split: str = "train", *, one_pass: bool = False,
                   records: list[dict] | None = None):
  """The `rankjax.data.Pipeline` of `stage` (which trains on `formats`) for
  `split` ("train"/"eval"; None: no eval data). `one_pass`: see
  `pipeline_config`.

  Raises UserInputError when the data's format does not suit the stage.
  """
  # `records`: rows made in-process (self-improvement loops) instead of cfg.data.
  if records is not None:
    source = data.RecordSource(records, name=f"{stage}:generated") if split == "train" else None
  else:
    source = open_source(cfg, task, stage, formats, split)
  if source is None:
    return None
  unpair = (data.UNPAIRED_PREFERENCE in formats
            and _first_format(source) == data.PREFERENCE)
  pipe_cfg = pipeline_config(cfg, stage, train=split == "train", unpair=unpair,
                             one_pass=one_pass)
  try:
    pipe = data.build_pipeline(source, tokenizer, pipe_cfg)
  except data.DataError as e:
    if split == "train":
      raise
    log.warning("%s: no evaluation batches (%s); skipping evaluation", stage, e)
    return None
  if pipe.example_format not in formats:
    hint = (" (or preference rows, unpaired)" if unpair or data.UNPAIRED_PREFERENCE in formats
            else "")
    raise UserInputError(f"stage {stage!r} trains on {' or '.join(formats)} "
                         f"records{hint}; {source!r} holds {pipe.example_format} records")
  return pipe


def check_divisible(cfg: Config, mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if cfg.data.batch_size % (shards * cfg.optim.grad_accum_steps):
    raise UserInputError(
        f"data.batch_size={cfg.data.batch_size} must be divisible by data x fsdp "
        f"({shards}) x optim.grad_accum_steps ({cfg.optim.grad_accum_steps})")
