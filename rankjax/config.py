"""Typed, frozen run configuration and `--config.a.b=value` overrides.

A recipe is a Python file whose `get_config()` returns a `Config`. The
command line overrides any leaf with `--config.section.field=value` (the
ml_collections `config_flags` convention over dataclasses). The whole config
is validated before anything compiles: an unknown key, a value of the wrong
type or an impossible value gives one message naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from pathlib import Path
from typing import Any, Literal

from rankjax.errors import UserInputError


class ConfigError(UserInputError):
  """A config problem; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelCfg:
  """The policy. `path` loads a Hugging Face directory (config.json +
  *.safetensors) or a GGUF file (`*.gguf`, its tokenizer included);
  otherwise a model is built from scratch with the fields below."""
  path: str = ""
  family: Literal["llama", "qwen2", "qwen3"] = "llama"
  hidden_size: int = 128
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 32
  intermediate_size: int = 384
  max_position_embeddings: int = 512
  dtype: Literal["float32", "bfloat16"] = "float32"
  param_dtype: Literal["float32", "bfloat16"] = "float32"
  # Rematerialise each layer in the backward pass (less activation memory,
  # one more forward of the layers); `remat_policy` says what a layer keeps:
  # "full" nothing, "dots_saveable" its matmul outputs (recomputes only the
  # cheap elementwise work: more memory than "full", less time).
  remat: bool = False
  remat_policy: Literal["full", "dots_saveable"] = "full"
  # Tokens per chunk of the LM head + log-softmax in every step that scores
  # tokens (SFT, DPO, KTO, GRPO, PPO): the [B, T, V] logits are never built
  # and the backward recomputes each chunk's logits (one more head matmul).
  # 0 = unchunked. Worth it when B·T·V·4 bytes is a large share of memory
  # (e.g. 1024-4096 at V = 128k-152k).
  logits_chunk: int = 0
  # LoRA on attention and MLP projections; 0 = full fine-tuning.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
  # Training stages that use LoRA when lora_rank > 0 (empty = all of them:
  # sft, rm, dpo, kto, grpo, ppo), e.g. ("dpo",) to fine-tune fully in SFT
  # and with adapters in DPO.
  lora_stages: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TokenizerCfg:
  """`path` = a directory with tokenizer.json, or "char" for the built-in
  character tokenizer; empty = the model path's, or the character tokenizer
  for from-scratch models."""
  path: str = ""


@dataclasses.dataclass(frozen=True)
class DataCfg:
  """Where examples come from and how they become batches."""
  # A built-in task (a module of rankjax.data.tasks: arithmetic, gsm8k) or
  # files: jsonl, parquet, tfds.
  source: str = "arithmetic"
  path: str = ""              # file path or glob (jsonl/parquet/gsm8k); TFDS data_dir
  tfds_name: str = ""
  eval_path: str = ""
  # Built-in arithmetic task.
  ops: tuple[str, ...] = ("add", "sub")
  min_digits: int = 1
  max_digits: int = 2
  cot: bool = False
  # Fraction of training demonstrations (problems chosen by a hash) that use
  # the calculator tool: "<calc>a+b</calc>" then its result, then the answer
  # line (needs cot; see rankjax.envs.calculator).
  tool_fraction: float = 0.0
  num_train: int = 20000
  num_eval: int = 200
  # Fraction of SFT demonstrations whose final answer is replaced by a wrong
  # one (seeded): imperfect demonstrations, the situation verifier-based RL
  # and reranking correct.
  sft_noise: float = 0.0
  # Batching.
  batch_size: int = 32
  max_length: int = 64
  max_prompt_length: int = 32
  packing: bool = False
  truncation: Literal["left", "right", "error"] = "error"
  on_bad_row: Literal["error", "skip"] = "error"
  shuffle: bool = True


@dataclasses.dataclass(frozen=True)
class OptimCfg:
  learning_rate: float = 1e-3
  schedule: Literal["cosine", "linear", "constant"] = "cosine"
  warmup_steps: int = 10
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  max_grad_norm: float = 1.0
  grad_accum_steps: int = 1


@dataclasses.dataclass(frozen=True)
class SFTCfg:
  steps: int = 300
  loss_mask: Literal["completion", "assistant", "all"] = "completion"
  unlikelihood_alpha: float = 0.0


@dataclasses.dataclass(frozen=True)
class RMCfg:
  steps: int = 200
  center_coef: float = 0.0


@dataclasses.dataclass(frozen=True)
class DPOCfg:
  steps: int = 200
  beta: float = 0.1
  loss_type: tuple[str, ...] = ("sigmoid",)
  loss_weights: tuple[float, ...] = ()
  label_smoothing: float = 0.0
  reference_free: bool = False
  sft_weight: float = 0.0
  precompute_ref: bool = False
  simpo_gamma: float = 0.5         # SimPO's target margin γ (loss_type "simpo")


@dataclasses.dataclass(frozen=True)
class KTOCfg:
  steps: int = 200
  beta: float = 0.1
  desirable_weight: float = 1.0
  undesirable_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class SampleCfg:
  """Decoding for RL rollouts and evaluation."""
  max_new_tokens: int = 16
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0


@dataclasses.dataclass(frozen=True)
class EnvCfg:
  """A multi-turn environment for GRPO, PPO, eval, rerank and STaR rollouts
  (`rankjax.envs`). name: "" (one turn), "calculator" (traceable, in-graph;
  the built-in character tokenizer), "calculator_host" (the same rule in
  Python), "guess" (a host number-guessing game), "tools" (the Python
  functions `tools` lists, called through the chat template's tool format),
  or "path/to/file.py:make_env" (a function returning a traceable or host
  environment). The completion buffer `sample.max_new_tokens` caps the
  model's and the environment's tokens together."""
  name: str = ""
  max_turns: int = 4
  turn_max_tokens: int = 0         # model tokens per turn before the env steps anyway; 0 = none
  max_observation_tokens: int = 16
  # How observations enter the KV cache: "forced" (a token per decode step)
  # or "prefill" (one chunk per answer); see docs/algorithms/multi_turn.md.
  observations: Literal["forced", "prefill"] = "forced"
  tools: tuple[str, ...] = ()      # "path/to/file.py:function" entries for name="tools"
  tool_format: Literal["qwen", "llama3"] = "qwen"


@dataclasses.dataclass(frozen=True)
class GRPOCfg:
  steps: int = 100
  learning_rate: float = 0.0       # 0 = optim.learning_rate
  num_prompts: int = 16            # prompts per step (B)
  group_size: int = 8              # completions per prompt (G)
  num_iterations: int = 1          # μ policy updates per batch of samples
  num_minibatches: int = 1
  beta: float = 0.0                # KL to the reference (k3); 0 = no reference forward
  eps_low: float = 0.2
  eps_high: float = 0.2
  advantage: Literal["grpo", "rloo", "reinforce_pp"] = "grpo"
  scale_rewards: Literal["group", "batch", "none"] = "group"
  std_eps: float = 1e-4
  ratio_level: Literal["token", "sequence"] = "token"
  aggregation: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
  mask_zero_std_groups: bool = False
  mask_truncated: bool = False
  rewards: tuple[str, ...] = ("correct",)
  reward_weights: tuple[float, ...] = ()
  # What the update minimises: "clipped" (the clipped surrogate on group
  # advantages) and/or listwise losses (`rankjax.losses.LISTWISE_LOSS_TYPES`:
  # each group ranked by reward, the loss on the implicit rewards
  # listwise_beta * log(pi/pi_ref) of its sequences), summed with
  # objective_weights (default 1 each). A listwise term needs the
  # reference forward.
  objective: tuple[str, ...] = ("clipped",)
  objective_weights: tuple[float, ...] = ()
  listwise_beta: float = 0.1
  listwise_target_temperature: float = 1.0   # the "softmax" loss's target softmax(r / t)


@dataclasses.dataclass(frozen=True)
class ListwiseCfg:
  """Offline listwise preference optimisation on ranked lists
  ({prompt, completions, scores}; preference pairs are lists of two)."""
  steps: int = 200
  beta: float = 0.1
  loss_type: tuple[str, ...] = ("plackett_luce",)
  loss_weights: tuple[float, ...] = ()
  target_temperature: float = 1.0  # the "softmax" loss's target softmax(scores / t); 0 = argmax
  reference_free: bool = False
  # Completions per list (K): shorter lists are padded and masked; longer
  # ones are a data error. The built-in tasks make lists of this size.
  list_size: int = 4


@dataclasses.dataclass(frozen=True)
class PPOCfg:
  steps: int = 100
  learning_rate: float = 0.0       # 0 = optim.learning_rate
  num_prompts: int = 32
  num_epochs: int = 2
  num_minibatches: int = 2
  gamma: float = 1.0
  lam: float = 0.95
  clip: float = 0.2
  value_clip: float = 0.2
  vf_coef: float = 0.5
  kl_coef: float = 0.05
  kl_estimator: Literal["k1", "k3"] = "k1"
  adaptive_kl_target: float = 0.0   # 0 = fixed coefficient
  adaptive_kl_horizon: int = 10000
  whiten_rewards: bool = False
  missing_eos_penalty: float = 0.0
  shared_critic: bool = False
  rewards: tuple[str, ...] = ("correct",)


@dataclasses.dataclass(frozen=True)
class SelfImproveCfg:
  """STaR / ReST-EM and iterative DPO: sample, verify, train, repeat."""
  iterations: int = 2
  num_prompts: int = 256           # training prompts sampled per iteration
  num_samples: int = 8             # K samples per prompt
  train_steps: int = 100           # SFT (star) or DPO (iterative_dpo) steps per iteration
  restart_from_base: bool = True   # ReST-EM/STaR: fine-tune the base model each iteration


@dataclasses.dataclass(frozen=True)
class SynthCfg:
  """Synthetic data ("synthesize"): the model proposes new examples from a
  pool of seeds shown k at a time, filters keep the novel, well-formed and
  verified ones, and the pool grows round by round
  (docs/algorithms/synthesis.md). Later stages train on the grown pool."""
  # "verified": the model writes a whole record (problem and solution) and
  # only records the task's verifier accepts are kept (OSS-Instruct style).
  # "self_instruct": the model writes a prompt, then answers it as a policy
  # (`responses` samples); a verifier, when the task can check the prompt,
  # picks a correct answer.
  method: Literal["verified", "self_instruct"] = "verified"
  seed_path: str = ""              # JSONL seed pool; empty = the task's training records
  num_seeds: int = 0               # the first n seeds; 0 = all
  rounds: int = 3                  # 0: later stages train on the seeds alone (a baseline)
  proposals: int = 256             # proposal prompts per round
  shots: int = 4                   # pool examples shown in each proposal prompt
  # Which pool records a proposal shows: any ("pool"), or the ones the
  # newest round kept ("latest": round 1 shows seeds, round r what round r-1
  # kept), so problems can drift further from the seeds each round.
  show: Literal["pool", "latest"] = "pool"
  header: str = ""                 # text before the examples (e.g. an instruction)
  temperature: float = 1.0
  max_new_tokens: int = 64         # tokens of one proposed record
  responses: int = 4               # self_instruct: answers sampled per new prompt
  # SFT steps teaching a copy of the model the proposal format (k records
  # in, one more out) on the seed pool first; 0 for models that already
  # continue lists (instruction-tuned checkpoints).
  proposer_steps: int = 0
  # A pretrained model that proposes in place of the run's model, used as it
  # is (OSS-Instruct's teacher): a Hugging Face directory or a .gguf file,
  # with its own tokenizer. Later stages still train the run's model.
  proposer_path: str = ""
  novelty: float = 0.7             # drop a prompt whose ROUGE-L F1 to the pool reaches this
  rouge_tokens: Literal["words", "chars"] = "words"
  min_chars: int = 1               # prompt length rule
  max_chars: int = 512
  pattern: str = ""                # regex a prompt must fully match (format rule); "" = any
  # What later stages train on: "pool" (seeds + synthesized) or "synthesized".
  train_on: Literal["pool", "synthesized"] = "pool"


@dataclasses.dataclass(frozen=True)
class HypernetCfg:
  """Text-to-LoRA ("hypernet"): a hypernetwork maps a task description to
  LoRA adapters of the frozen base, trained by SFT through the adapters it
  generates over the arithmetic family's training variants, and measured
  zero-shot on held-out variants against the base, a multi-task LoRA and
  per-task oracle LoRAs (docs/algorithms/hypernet.md). Variants are named
  <op>_<format>_<digits>: op add/sub/mul, format bare/cot, digits 1/2."""
  # SFT steps teaching run.model every variant (no descriptions) first;
  # 0 = run.model is the base as it is. Uses data.batch_size and optim.
  base_steps: int = 0
  # "mean_hidden": the base's mean-pooled hidden states of the description;
  # "learned": a learned vector per training task (held-out: their mean).
  embedding: Literal["mean_hidden", "learned"] = "mean_hidden"
  hidden: int = 128                # width of the hypernetwork's MLP
  rank: int = 4                    # generated LoRA rank (and the LoRA baselines')
  alpha: float = 8.0
  targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
  steps: int = 300                 # hypernetwork updates; each LoRA baseline gets as many
  tasks_per_step: int = 4          # T tasks per step ...
  rows_per_task: int = 8           # ... b rows each (LoRA baselines: batches of T·b rows)
  learning_rate: float = 1e-3
  train_variants: tuple[str, ...] = (
      "add_bare_1", "add_bare_2", "add_cot_1", "add_cot_2", "sub_bare_1", "sub_bare_2",
      "sub_cot_1", "mul_bare_2", "mul_cot_1", "mul_cot_2")
  heldout_variants: tuple[str, ...] = ("sub_cot_2", "mul_bare_1")
  num_train: int = 2000            # training problems per variant
  num_eval: int = 100              # held-out problems per variant (pass@1)
  # Also train the multi-task LoRA and one oracle LoRA per held-out variant
  # (the comparison table); False: base and hypernetwork only.
  baselines: bool = True


@dataclasses.dataclass(frozen=True)
class EvalCfg:
  num_problems: int = 200
  num_samples: int = 8             # k for pass@k / maj@k / best-of-N
  temperature: float = 1.0
  # A task without a verifier counts a sample correct when the run's first
  # reward function gives it at least this.
  pass_threshold: float = 1.0
  # Soft best-of-N: resample the N samples with weights softmax(r / beta),
  # r = the GRPO rewards, i.e. sample pi * exp(r / beta) approximately (the
  # target KL-regularised training tilts toward). 0 = grpo.listwise_beta.
  tilt_beta: float = 0.0


@dataclasses.dataclass(frozen=True)
class MeshCfg:
  """Mesh axis sizes; -1 fills the remaining devices."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointCfg:
  every: int = 0                   # steps; 0 = only at the end of a stage
  keep: int = 2
  best_metric: str = ""
  best_mode: Literal["min", "max"] = "min"
  async_save: bool = True
  export_hf: bool = True


@dataclasses.dataclass(frozen=True)
class Config:
  """A run: a pipeline of stages over one model, data source and mesh."""
  name: str = "demo"
  seed: int = 0
  # "path/to/file.py:make_task": a Python task (make_task() returns a
  # rankjax.data.tasks.Task); empty = the task `data` describes.
  task: str = ""
  pipeline: tuple[str, ...] = ("generate",)
  prompt: str = "12+34="
  log_every: int = 10
  eval_every: int = 0
  on_nonfinite: Literal["skip", "stop"] = "skip"
  model: ModelCfg = ModelCfg()
  tokenizer: TokenizerCfg = TokenizerCfg()
  data: DataCfg = DataCfg()
  optim: OptimCfg = OptimCfg()
  sft: SFTCfg = SFTCfg()
  rm: RMCfg = RMCfg()
  dpo: DPOCfg = DPOCfg()
  kto: KTOCfg = KTOCfg()
  grpo: GRPOCfg = GRPOCfg()
  ppo: PPOCfg = PPOCfg()
  listwise: ListwiseCfg = ListwiseCfg()
  sample: SampleCfg = SampleCfg()
  env: EnvCfg = EnvCfg()
  eval: EvalCfg = EvalCfg()
  self_improve: SelfImproveCfg = SelfImproveCfg()
  synth: SynthCfg = SynthCfg()
  hypernet: HypernetCfg = HypernetCfg()
  mesh: MeshCfg = MeshCfg()
  checkpoint: CheckpointCfg = CheckpointCfg()


# The pipeline's vocabulary; `rankjax.run.STAGES` maps each name to its
# function (and checks at import that the two agree).
STAGES = ("generate", "sft", "rm", "dpo", "kto", "listwise", "grpo", "ppo", "eval",
          "rerank", "star", "iterative_dpo", "synthesize", "hypernet")


def stage_key(pipeline: tuple[str, ...], i: int) -> str:
  """The name of the i-th stage of `pipeline`, numbered from its second
  occurrence on: ("sft", "eval", "sft") -> "sft", "eval", "sft_2". A
  repeated training stage keeps its own checkpoints, metrics and summary."""
  n = pipeline[:i + 1].count(pipeline[i])
  return pipeline[i] if n == 1 else f"{pipeline[i]}_{n}"


# -- validation ----------------------------------------------------------------

_POSITIVE = {
    "data.batch_size", "data.max_length", "data.max_prompt_length", "optim.grad_accum_steps",
    "sample.max_new_tokens", "grpo.group_size", "grpo.num_prompts", "grpo.num_iterations",
    "grpo.num_minibatches", "grpo.listwise_beta", "listwise.beta", "listwise.list_size",
    "ppo.num_prompts", "ppo.num_epochs", "ppo.num_minibatches",
    "eval.num_samples", "self_improve.num_prompts", "self_improve.num_samples",
    "self_improve.train_steps", "synth.proposals", "synth.shots",
    "synth.max_new_tokens", "synth.responses", "synth.max_chars", "env.max_turns",
    "env.max_observation_tokens",
    "hypernet.hidden", "hypernet.rank", "hypernet.alpha", "hypernet.steps",
    "hypernet.tasks_per_step", "hypernet.rows_per_task", "hypernet.learning_rate",
    "hypernet.num_train", "hypernet.num_eval",
    "model.hidden_size", "model.num_layers", "model.num_heads",
    "model.num_kv_heads", "model.head_dim", "model.intermediate_size", "checkpoint.keep",
}
_NON_NEGATIVE = {
    "sft.steps", "rm.steps", "dpo.steps", "kto.steps", "listwise.steps", "grpo.steps", "ppo.steps",
    "optim.warmup_steps", "optim.weight_decay", "optim.max_grad_norm", "grpo.beta",
    "sample.temperature", "sample.top_k", "model.lora_rank", "model.logits_chunk",
    "checkpoint.every",
    "log_every", "eval_every", "data.num_train", "data.num_eval", "eval.temperature",
    "grpo.learning_rate", "ppo.learning_rate", "self_improve.iterations", "env.turn_max_tokens",
    "grpo.listwise_target_temperature", "listwise.target_temperature", "eval.tilt_beta",
    "synth.rounds", "synth.num_seeds", "synth.proposer_steps", "synth.temperature",
    "synth.min_chars",
    "hypernet.base_steps",
}


def _check(ok: bool, key: str, msg: str):
  if not ok:
    raise ConfigError(f"config key {key!r}: {msg}")


def validate(cfg: Config) -> Config:
  """Check every value; raises ConfigError naming the key. Returns cfg."""
  for key, value in flatten(cfg).items():
    hint = _leaf_types()[key]
    _check(_matches(value, hint), key, f"expected {_type_name(hint)}, got {value!r}")
    if key in _POSITIVE:
      _check(value > 0, key, f"must be > 0, got {value}")
    if key in _NON_NEGATIVE:
      _check(value >= 0, key, f"must be >= 0, got {value}")
  for stage in cfg.pipeline:
    _check(stage in STAGES, "pipeline", f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
  _check(0 < cfg.sample.top_p <= 1, "sample.top_p", f"must be in (0, 1], got {cfg.sample.top_p}")
  _check(0 <= cfg.optim.b1 < 1 and 0 <= cfg.optim.b2 < 1, "optim.b1/b2", "must be in [0, 1)")
  _check(cfg.optim.learning_rate > 0, "optim.learning_rate", "must be > 0")
  _check(cfg.model.num_heads % cfg.model.num_kv_heads == 0, "model.num_kv_heads",
         f"must divide model.num_heads ({cfg.model.num_heads})")
  _check(cfg.grpo.group_size >= 2 or "grpo" not in cfg.pipeline, "grpo.group_size",
         "must be >= 2 (GRPO's baseline is the group)")
  _check(cfg.grpo.num_prompts % cfg.grpo.num_minibatches == 0,
         "grpo.num_minibatches", "must divide num_prompts (a minibatch holds whole groups)")
  _check(cfg.ppo.num_prompts % cfg.ppo.num_minibatches == 0,
         "ppo.num_minibatches", "must divide num_prompts")
  _check(not cfg.grpo.reward_weights or len(cfg.grpo.reward_weights) == len(cfg.grpo.rewards),
         "grpo.reward_weights", "must have one weight per reward")
  from rankjax.data.tasks import source_names
  _check(cfg.data.source in source_names(), "data.source",
         f"expected one of {', '.join(map(repr, source_names()))}, got {cfg.data.source!r}")
  from rankjax.losses import DPO_LOSS_TYPES
  unknown = [t for t in cfg.dpo.loss_type if t not in DPO_LOSS_TYPES]
  _check(not unknown, "dpo.loss_type",
         f"unknown {unknown}; expected names from {', '.join(DPO_LOSS_TYPES)}")
  _check(not cfg.dpo.loss_weights or len(cfg.dpo.loss_weights) == len(cfg.dpo.loss_type),
         "dpo.loss_weights", "must have one weight per loss type")
  from rankjax.losses import LISTWISE_LOSS_TYPES
  unknown = [t for t in cfg.listwise.loss_type if t not in LISTWISE_LOSS_TYPES]
  _check(cfg.listwise.loss_type and not unknown, "listwise.loss_type",
         f"unknown {unknown or 'empty'}; expected names from {', '.join(LISTWISE_LOSS_TYPES)}")
  _check(not cfg.listwise.loss_weights
         or len(cfg.listwise.loss_weights) == len(cfg.listwise.loss_type),
         "listwise.loss_weights", "must have one weight per loss type")
  _check(cfg.listwise.list_size >= 2, "listwise.list_size", "must be >= 2 (a list ranks two or more)")
  objectives = ("clipped", *LISTWISE_LOSS_TYPES)
  unknown = [t for t in cfg.grpo.objective if t not in objectives]
  _check(cfg.grpo.objective and not unknown, "grpo.objective",
         f"unknown {unknown or 'empty'}; expected names from {', '.join(objectives)}")
  _check(len(set(cfg.grpo.objective)) == len(cfg.grpo.objective), "grpo.objective",
         "names an objective twice")
  _check(not cfg.grpo.objective_weights
         or len(cfg.grpo.objective_weights) == len(cfg.grpo.objective),
         "grpo.objective_weights", "must have one weight per objective")
  _check(cfg.data.max_prompt_length <= cfg.data.max_length, "data.max_prompt_length",
         "must be <= data.max_length")
  _check(cfg.model.lora_rank == 0 or cfg.model.lora_alpha > 0, "model.lora_alpha", "must be > 0")
  _check(0.0 <= cfg.data.sft_noise < 1.0, "data.sft_noise", "must be in [0, 1)")
  from rankjax.envs import BUILTIN_ENVS
  _check(cfg.env.name in ("", *BUILTIN_ENVS) or ":" in cfg.env.name, "env.name",
         f"expected '', one of {', '.join(map(repr, BUILTIN_ENVS))}, or "
         f"path/to/file.py:function, got {cfg.env.name!r}")
  _check(cfg.env.name != "tools" or cfg.env.tools, "env.tools",
         "env.name='tools' needs at least one path/to/file.py:function entry")
  _check(0.0 < cfg.synth.novelty <= 1.0, "synth.novelty", "must be in (0, 1]")
  _check(cfg.synth.min_chars <= cfg.synth.max_chars, "synth.min_chars",
         "must be <= synth.max_chars")
  if cfg.synth.proposer_path:
    _check(Path(cfg.synth.proposer_path).exists(), "synth.proposer_path",
           f"no such file or directory {cfg.synth.proposer_path!r}")
    _check(cfg.synth.proposer_steps == 0, "synth.proposer_steps",
           "must be 0 with synth.proposer_path (a pretrained proposer is used as it is)")
  if cfg.synth.pattern:
    import re
    try:
      re.compile(cfg.synth.pattern)
    except re.error as e:
      raise ConfigError(f"config key 'synth.pattern': not a regular expression: {e}") from None
  _check_hypernet(cfg.hypernet)
  _check(0.0 <= cfg.data.tool_fraction <= 1.0, "data.tool_fraction", "must be in [0, 1]")
  _check(cfg.data.tool_fraction == 0 or cfg.data.cot, "data.tool_fraction",
         "tool-use demonstrations end in 'answer: N': set data.cot=True")
  return cfg


def _check_hypernet(hp: HypernetCfg) -> None:
  from rankjax.models import LORA_TARGETS
  unknown = [t for t in hp.targets if t not in LORA_TARGETS]
  _check(hp.targets and not unknown, "hypernet.targets",
         f"unknown {unknown or 'empty'}; expected names from {', '.join(LORA_TARGETS)}")
  from rankjax.hypernet._tasks import parse_variant  # the package imports train, which imports this
  for key in ("hypernet.train_variants", "hypernet.heldout_variants"):
    names = getattr(hp, key.split(".")[1])
    _check(bool(names), key, "needs at least one variant")
    for name in names:
      try:
        parse_variant(name, f"config key {key!r}")
      except UserInputError as e:
        raise ConfigError(str(e)) from None
  both = sorted(set(hp.train_variants) & set(hp.heldout_variants))
  _check(not both, "hypernet.heldout_variants", f"{both} are also training variants")
  _check(hp.tasks_per_step <= len(hp.train_variants), "hypernet.tasks_per_step",
         f"must be <= the {len(hp.train_variants)} training variants, got {hp.tasks_per_step}")


# -- flattening and overrides --------------------------------------------------


def flatten(obj, prefix: str = "") -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    key = prefix + f.name
    if dataclasses.is_dataclass(value):
      out.update(flatten(value, key + "."))
    else:
      out[key] = value
  return out


def _leaf_types(cls=Config, prefix: str = "") -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    hint = hints[f.name]
    if dataclasses.is_dataclass(hint):
      out.update(_leaf_types(hint, prefix + f.name + "."))
    else:
      out[prefix + f.name] = hint
  return out


def _type_name(hint) -> str:
  origin = typing.get_origin(hint)
  if origin is Literal:
    return "one of " + ", ".join(map(repr, typing.get_args(hint)))
  if origin is tuple:
    return f"a tuple of {typing.get_args(hint)[0].__name__}"
  return getattr(hint, "__name__", str(hint))


def _matches(value, hint) -> bool:
  origin = typing.get_origin(hint)
  if origin is Literal:
    return value in typing.get_args(hint)
  if origin is tuple:
    elem = typing.get_args(hint)[0]
    return isinstance(value, tuple) and all(_matches(v, elem) for v in value)
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, h) for h in typing.get_args(hint))
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, hint)


def _parse(key: str, text: str, hint):
  origin = typing.get_origin(hint)
  try:
    if origin is tuple:
      elem = typing.get_args(hint)[0]
      items = [t.strip() for t in text.strip("()[]").split(",") if t.strip()]
      return tuple(_parse(key, t, elem) for t in items)
    if origin is Literal:
      return text
    if hint is bool:
      if text.lower() in ("true", "1", "yes"):
        return True
      if text.lower() in ("false", "0", "no"):
        return False
      raise ValueError(text)
    if hint is int:
      return int(text)
    if hint is float:
      return float(text)
    return text
  except ValueError:
    raise ConfigError(f"config key {key!r}: cannot parse {text!r} as {_type_name(hint)}") from None


def override(cfg: Config, key: str, text: str) -> Config:
  """cfg with the leaf `key` ("a.b.c") set from its command-line text."""
  types_ = _leaf_types(type(cfg))
  if key not in types_:
    near = [k for k in types_ if k.split(".")[-1] == key.split(".")[-1]]
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise ConfigError(f"unknown config key {key!r}{hint}")
  value = _parse(key, text, types_[key])
  return _replace_path(cfg, key.split("."), value)


def _replace_path(obj, path: list[str], value):
  if len(path) == 1:
    return dataclasses.replace(obj, **{path[0]: value})
  child = getattr(obj, path[0])
  return dataclasses.replace(obj, **{path[0]: _replace_path(child, path[1:], value)})


def load(path: str | None) -> Config:
  """`get_config()` from a recipe file (the built-in demo when None)."""
  # The demo is a recipe file like any other (read, not imported: the
  # config layer sits below everything, the demo included).
  file = Path(path) if path else Path(__file__).with_name("demo.py")
  if not file.exists():
    raise ConfigError(f"--config: no such file {path}")
  spec = importlib.util.spec_from_file_location(f"rankjax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: defines no get_config()")
  cfg = module.get_config()
  if not isinstance(cfg, Config):
    raise ConfigError(f"{path}: get_config() must return rankjax.config.Config, got {type(cfg).__name__}")
  return cfg
