"""A run: the objects every stage shares, and the stage registry.

`execute(cfg, workdir)` builds the task, tokenizer and model once, then runs
`cfg.pipeline` stage by stage; each stage is a function `(run) -> None` from
a library (`STAGES`, the one table of them: libraries never import this
module) that reads its own config section and may replace `run.model`
(e.g. SFT hands its trained model to GRPO).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rankjax import checkpoint, models, parallel
from rankjax.data import tasks
from rankjax import config as config_lib
from rankjax.config import Config
from rankjax.tokenizer import CharTokenizer, load_tokenizer


@dataclasses.dataclass
class Run:
  cfg: Config
  workdir: Path
  task: tasks.Task
  tokenizer: Any
  model: models.Transformer
  summary: dict = dataclasses.field(default_factory=dict)
  # Set by an "rm" stage: a scalar-head model later stages score with.
  reward_model: models.Transformer | None = None
  # SIGTERM (preemption) turns this on; training loops poll it, checkpoint
  # and return, and the pipeline stops after the current stage.
  preemption: Any = None
  # The running stage's name, numbered when the pipeline repeats it ("sft",
  # then "sft_2"): its checkpoints, metrics and summary entry.
  stage_key: str = ""

  def stop_requested(self) -> bool:
    return bool(self.preemption is not None and self.preemption.requested)

  def export(self, model: models.Transformer, path: Path) -> str | None:
    """Saves `model` as a Hugging Face checkpoint with its tokenizer, so
    `model.path=<path>` loads it on its own (`checkpoint.export_hf`)."""
    if not self.cfg.checkpoint.export_hf or jax.process_index() != 0:
      return None
    models.save_pretrained(model, path)
    self.tokenizer.save(path)
    return str(path)

  def write_summary(self) -> None:
    (self.workdir / "summary.json").write_text(json.dumps(self.summary, indent=2, default=float))


def build_tokenizer(cfg: Config):
  # A .gguf model path carries its tokenizer in its metadata (load_tokenizer reads it).
  path = cfg.tokenizer.path or cfg.model.path
  return load_tokenizer(path) if path and path != "char" else CharTokenizer()


def model_config(cfg: Config, tokenizer) -> models.ModelConfig:
  """The from-scratch ModelConfig for `cfg.model` (no HF path)."""
  m = cfg.model
  return models.ModelConfig(
      vocab_size=tokenizer.vocab_size, hidden_size=m.hidden_size,
      intermediate_size=m.intermediate_size, num_layers=m.num_layers,
      num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
      model_type=m.family, attention_bias=m.family == "qwen2", qk_norm=m.family == "qwen3",
      tie_word_embeddings=False, max_position_embeddings=m.max_position_embeddings,
      bos_token_id=tokenizer.bos_id, eos_token_ids=tuple(tokenizer.eos_ids),
      pad_token_id=tokenizer.pad_id, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
      remat_policy=m.remat_policy, logits_chunk=m.logits_chunk)


def build_model(cfg: Config, tokenizer) -> models.Transformer:
  """The policy, laid out on the run's mesh by the sharding table, as the
  training stages leave it: stages before and after training then sample
  with the same shardings, hence one compiled sampler."""
  if cfg.model.path:
    m = cfg.model
    model = models.load(m.path, dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype),
                        remat=m.remat, remat_policy=m.remat_policy,
                        logits_chunk=m.logits_chunk)
  else:
    model = models.create(model_config(cfg, tokenizer), seed=cfg.seed)
  return parallel.shard_model(model, parallel.make_mesh(cfg.mesh))


def stage_generate(run: Run) -> None:
  """Greedily continue `cfg.prompt` (the smallest end-to-end check)."""
  from rankjax import sampling
  tok = run.tokenizer
  prompt = tok.encode(run.cfg.prompt)
  scfg = sampling.SamplingConfig(max_new_tokens=run.cfg.sample.max_new_tokens, temperature=0.0,
                                 eos_token_ids=tuple(tok.eos_ids), pad_token_id=tok.pad_id)
  out = sampling.generate(run.model, [prompt], scfg)
  text = tok.decode(list(out.tokens[0, : int(out.lengths[0])]))
  print(f"prompt: {run.cfg.prompt!r}\ncompletion: {text!r}")
  run.summary["generate"] = {"prompt": run.cfg.prompt, "completion": text}


def _stage_table() -> dict[str, Callable[[Run], None]]:
  # The one table of pipeline stages. Each is `fn(run)`: it reads its own
  # config section (`cfg.<name>`; star/iterative_dpo: `cfg.self_improve`).
  from rankjax import hypernet, improve, inference, synth, train
  return {"generate": stage_generate,
          "sft": train.stage_sft, "rm": train.stage_rm, "dpo": train.stage_dpo,
          "kto": train.stage_kto, "listwise": train.stage_listwise,
          "grpo": train.stage_grpo, "ppo": train.stage_ppo,
          "eval": inference.stage_eval, "rerank": inference.stage_rerank,
          "star": improve.stage_star, "iterative_dpo": improve.stage_iterative_dpo,
          "synthesize": synth.stage_synthesize, "hypernet": hypernet.stage_hypernet}


STAGES: dict[str, Callable[[Run], None]] = _stage_table()
assert tuple(STAGES) == config_lib.STAGES, "rankjax.config.STAGES lists the same stages"


def check_rewards(cfg: Config, task) -> None:
  """The reward lists the pipeline will call (PPO's; GRPO's, which eval,
  rerank and self-improvement also verify with), checked on the task's
  records before the first stage."""
  from rankjax import rewards
  if "ppo" in cfg.pipeline:
    rewards.check_functions(cfg.ppo.rewards, task)
  if set(cfg.pipeline) & {"grpo", "eval", "rerank", "star", "iterative_dpo"}:
    rewards.check_functions(cfg.grpo.rewards, task)


def execute(cfg: Config, workdir: str | Path) -> Run:
  # Library callers (notebooks) get the same checks as the command line,
  # before anything is built or compiled.
  config_lib.validate(cfg)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
  if cfg.model.path:  # a missing or pickle-only checkpoint, before its tokenizer is read
    models.check_checkpoint_dir(cfg.model.path)
  task = tasks.from_config(cfg)
  check_rewards(cfg, task)
  tokenizer = build_tokenizer(cfg)
  run = Run(cfg=cfg, workdir=workdir, task=task, tokenizer=tokenizer,
            model=build_model(cfg, tokenizer))
  print(f"rankjax: {cfg.name}: pipeline {' -> '.join(cfg.pipeline)} on "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s); workdir {workdir}")
  with checkpoint.PreemptionGuard() as guard:
    run.preemption = guard
    for i, name in enumerate(cfg.pipeline):
      start = time.time()
      run.stage_key = config_lib.stage_key(cfg.pipeline, i)
      STAGES[name](run)
      # A stage that runs twice (eval before and after training) keeps both.
      run.summary.setdefault("wall_seconds", {})[run.stage_key] = round(time.time() - start, 2)
      run.write_summary()
      if guard.requested:
        print(f"rankjax: stopped after stage {name!r} (SIGTERM); rerun the same command "
              "to resume from the checkpoint")
        break
  return run
