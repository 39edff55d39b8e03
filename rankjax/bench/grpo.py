"""One GRPO step: rankjax's compiled step against TRL's `GRPOTrainer`.

    python -m rankjax.bench grpo [--batch 8] [--group 8] [--prompt-len 32]
        [--new-tokens 64] [--layers 8] [--repeats 3] [--threads N] [--no-trl]
        [--tiny] [--json PATH]
    python -m rankjax.bench grpo --env {calculator,calculator_host}
        [--turn-tokens 8] [--repeats 7] [--tiny]

Workload: B prompts x G completions x N new tokens, every completion forced
to its full N tokens (rankjax: no EOS id; TRL: `min_new_tokens = N`), on the
sampler benchmark's random Llama (vocab 32000, D 512, 8 layers, 8 query / 2
KV heads, F 1408, float32; `sampler.random_model`). μ = 1 pass of one
minibatch (one optimizer update per step), β = 0.04 (a reference forward),
DAPO token aggregation, group-scaled advantages, AdamW at lr 1e-6 with
global-norm clipping 1, temperature 1. The reward is a token count, the same
in both systems: the share of a completion's tokens with an even id
(traceable in rankjax, a Python function of `completion_ids` for TRL).

rankjax runs the real step (`train.grpo_step` jitted by `jit_rl_step`, state
donated) in this process: a first (compiling) call, then `repeats` timed
steps. The step is one compiled program, so its time split is measured by
jitting its pieces apart and timing them on fixed samples, in alternation
with the step (load from other processes then hits all of them alike):
  sample     `sampling.sample_loop` (prefill once, G samples, N decode steps)
  score      the reward, the weighted combination and the group advantages
  reference  the reference model's log-probs of the completions
  update     μ x minibatch clipped-surrogate passes with the AdamW update
TRL runs in a subprocess (its peak RSS is then its own, read from VmHWM;
the interpreter imports jax first, ~250 MB before torch, reported as
`rss_before_torch_mb`) on the same weights saved with
`models.save_pretrained`, the same prompts (a word-level tokenizer whose
token `<i>` is id i) and the same reward: `max_steps = 1 + repeats`, the
first step is the warm-up, the rest are timed by a callback around each
optimizer step. Its split comes from timing the trainer's `_generate`,
`_calculate_rewards` and reference-model log-prob calls; its update is the
rest of the step.

`--env NAME` times the environment's overhead instead (no TRL, no step):
`train.sample_completions` (the step's sampling, `sampling.sample_loop`)
with the environment against the same call without it, in alternation
(A/B/A/B, medians). The model is the same random Llama over the built-in
character tokenizer's vocabulary (the calculator reads its characters).
Both runs write N tokens per row (no EOS id): each decode step writes one
token per row, the model's or an observation's, so the two runs take the
same N decode steps and the ratio of their times is the overhead per decode
step. A random model rarely closes `</calc>`, so turns are forced with
`Limits(turn_max_tokens=--turn-tokens)`: every turn ends after that many
model tokens, the calculator answers "error\n", and turns go on until the
buffer is full. For the host calculator (`envs.host`, one `io_callback` at
each decode step where a turn ends) the time difference is also divided by
the env steps taken (row-turns, and callbacks: decode steps with a turn end).

FLOP floor = (2·N per generated token + 6·N per trained token + 2·N per
reference-forward token) / the float32 matmul peak measured in this run (a
2048³ matmul, `_common.matmul_peak`, probed between the timed calls so that
load from other processes hits both alike; its best). N = matmul parameters
(every projection and the LM head). The tokens are the B·G·N completion
tokens (the trained ones: those whose log-probs enter the loss). The JSON
also holds a full-sequence floor that charges the layers for the prompt
positions the forward passes also run (each prompt once per group, as
`grouped_hidden_states` runs them; the LM head only for completions) and
the prefill; attention score FLOPs (~1.5% at 96 positions) are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import envs, models, parallel, rewards, sampling, train
from rankjax.bench import _common
from rankjax.bench.sampler import random_model
from rankjax.bench.train import matmul_params
from rankjax.config import GRPOCfg, OptimCfg, SampleCfg
from rankjax.tokenizer import CharTokenizer

_FULL = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8,
             num_heads=8, num_kv_heads=2, head_dim=64)
_TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
             num_heads=4, num_kv_heads=2, head_dim=16)

BETA = 0.04
NUM_ITERATIONS = 1
LEARNING_RATE = 1e-6
# TRL's GRPOConfig defaults the step shares: DAPO aggregation, group-scaled
# advantages, ε = 0.2, AdamW(0.9, 0.999), no weight decay, clip 1.
AGGREGATION = "dapo"
PIECES = ("sample", "score", "reference", "update")

# (key, minimum, what the issue asks for)
TARGETS = (("vs_trl", 1.5, "rankjax step >= 1.5x faster than TRL's"),
           ("floor_fraction", 0.5, "rankjax step within 2x of the FLOP floor"))


@dataclasses.dataclass(frozen=True)
class Workload:
  batch: int          # prompts per step (B)
  group: int          # completions per prompt (G)
  prompt_len: int     # P
  new_tokens: int     # N, forced

  @property
  def rows(self) -> int:
    return self.batch * self.group

  @property
  def completion_tokens(self) -> int:
    return self.rows * self.new_tokens


_WORKLOADS = {"full": Workload(batch=8, group=8, prompt_len=32, new_tokens=64),
              "tiny": Workload(batch=2, group=4, prompt_len=8, new_tokens=8)}


def parse_args(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m rankjax.bench grpo",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=None, help="prompts per step")
  p.add_argument("--group", type=int, default=None, help="completions per prompt")
  p.add_argument("--prompt-len", type=int, default=None)
  p.add_argument("--new-tokens", type=int, default=None)
  p.add_argument("--layers", type=int, default=None)
  p.add_argument("--no-trl", action="store_true", help="skip TRL's GRPOTrainer")
  p.add_argument("--tiny", action="store_true", help="a tiny model and workload (smoke test)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--env", default="", choices=("", "calculator", "calculator_host"),
                 help="time sampling with this environment against without it (no TRL)")
  p.add_argument("--turn-tokens", type=int, default=8,
                 help="with --env: model tokens per turn (envs.Limits.turn_max_tokens)")
  p.add_argument("--trl-child", default=None, help=argparse.SUPPRESS)
  _common.add_common_args(p)
  return p.parse_args(argv)


def model_config(args) -> models.ModelConfig:
  kw = dict(_TINY if args.tiny else _FULL)
  kw["num_layers"] = args.layers or kw["num_layers"]
  return models.ModelConfig(**kw, model_type="llama", max_position_embeddings=4096,
                            eos_token_ids=(), pad_token_id=0)


def workload(args) -> Workload:
  base = _WORKLOADS["tiny" if args.tiny else "full"]
  return Workload(batch=args.batch or base.batch, group=args.group or base.group,
                  prompt_len=args.prompt_len or base.prompt_len,
                  new_tokens=args.new_tokens or base.new_tokens)


def make_prompts(vocab: int, w: Workload, seed: int) -> np.ndarray:
  """Random prompt ids in [2, vocab): 0 and 1 are TRL's pad and EOS."""
  rng = np.random.default_rng(seed)
  return rng.integers(2, vocab, (w.batch, w.prompt_len), dtype=np.int32)


# ---------------------------------------------------------------------------
# The reward, in both systems.
# ---------------------------------------------------------------------------


def even_token_reward() -> rewards.Reward:
  """Share of the completion's tokens whose id is even (traceable)."""
  def fn(x: rewards.RewardInputs, _):
    mask = x.completion_mask.astype(jnp.float32)
    even = (x.completion_tokens % 2 == 0).astype(jnp.float32)
    return jnp.sum(even * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
  return rewards.Reward("even_tokens", fn)


def even_tokens(prompts, completions, completion_ids, **_) -> list[float]:
  """`even_token_reward` as a TRL reward function."""
  return [sum(t % 2 == 0 for t in ids) / max(len(ids), 1) for ids in completion_ids]


# ---------------------------------------------------------------------------
# FLOPs.
# ---------------------------------------------------------------------------


def step_flops(cfg: models.ModelConfig, w: Workload) -> dict[str, dict[str, float]]:
  """FLOPs of each piece: `floor` as the issue counts them (completion
  tokens only), `full_sequence` also charging the layers for prompt
  positions (and the prefill)."""
  n = matmul_params(cfg)
  head = cfg.hidden_size * cfg.vocab_size
  layers = n - head
  c, rows = w.completion_tokens, w.rows
  # The forward runs each prompt once per group (`grouped_hidden_states`)
  # and never feeds the completions' last token.
  seq_layers = layers * (w.batch * w.prompt_len + rows * (w.new_tokens - 1)) + head * c
  floor = {"sample": 2 * n * c, "score": 0.0, "reference": 2 * n * c if BETA else 0.0,
           "update": 6 * n * c * NUM_ITERATIONS}
  full = {"sample": 2 * n * c + 2 * layers * w.batch * w.prompt_len, "score": 0.0,
          "reference": 2 * seq_layers if BETA else 0.0,
          "update": 6 * seq_layers * NUM_ITERATIONS}
  return {"floor": floor, "full_sequence": full}


# ---------------------------------------------------------------------------
# rankjax: the fused step and its pieces.
# ---------------------------------------------------------------------------


def grpo_hparams(w: Workload) -> GRPOCfg:
  return GRPOCfg(num_prompts=w.batch, group_size=w.group, num_iterations=NUM_ITERATIONS,
                 num_minibatches=1, beta=BETA, aggregation=AGGREGATION)


def rollout_settings(w: Workload) -> train.RolloutSettings:
  # eos_ids=() forces every completion to its full N tokens.
  return train.RolloutSettings(SampleCfg(max_new_tokens=w.new_tokens, temperature=1.0),
                               eos_ids=(), pad_id=0)


def optim_cfg() -> OptimCfg:
  return OptimCfg(learning_rate=LEARNING_RATE, schedule="constant", warmup_steps=0,
                  b1=0.9, b2=0.999, weight_decay=0.0, max_grad_norm=1.0)


def sample_piece(state, batch, *, hp: GRPOCfg, settings: train.RolloutSettings):
  """Step 1 of `grpo_step`, first half: the sampling loop."""
  rng = jax.random.split(jax.random.wrap_key_data(state.rng))[0]
  return train.sample_completions(state.model(), batch, rng, settings=settings,
                                  group_size=hp.group_size)


def score_piece(batch, out: sampling.SampleOutput, reward_states, *, hp: GRPOCfg,
                rewards_: tuple):
  """Step 1, second half, and step 2 of `grpo_step`: rewards, combination,
  group advantages."""
  ro = train.score_completions(batch, out, rewards_, reward_states)
  adv, _ = train.advantages(ro.total, ro.valid, hp)
  return ro, adv


def reference_piece(state, ro: train.Rollout):
  """The β > 0 part of `grpo_step`: the reference's completion log-probs."""
  return train.completion_logps(state.ref_model(), ro.prompt, ro.prompt_mask, ro.completion,
                                ro.completion_mask)


def update_piece(state, data, *, hp: GRPOCfg, max_new_tokens: int):
  """Step 3 of `grpo_step` on fixed samples (`data` as `policy_updates`
  takes it): the same minibatch order, loss and optimizer calls."""
  order = train.minibatch_order(jax.random.wrap_key_data(state.rng),
                                data["prompt"].shape[0], hp)
  new_state, metrics = train.policy_updates(state, data, order, hp=hp,
                                            max_new_tokens=max_new_tokens)
  return new_state, jnp.mean(metrics["loss"])


def own_peak_rss_mb() -> float:
  """This process's own peak RSS (VmHWM). `ru_maxrss` carries over a
  subprocess's pre-exec high-water mark, i.e. the spawning parent's RSS."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return _common.peak_rss_mb()


def _peak_probe(n: int, found: list[float]):
  """A callable that probes the matmul peak and records it in `found`."""
  def probe():
    found.append(_common.matmul_peak(n, repeats=3)["gflops"])
  return probe


def run_rankjax(cfg: models.ModelConfig, w: Workload, prompts: np.ndarray, args,
                peaks: list[float], export_dir: str | None = None) -> dict[str, Any]:
  """The fused step's first (compiling) call, then the step and its pieces
  timed in alternation; `export_dir` also receives the weights as an HF
  checkpoint (for TRL)."""
  model = random_model(cfg, args.seed)
  if export_dir:
    models.save_pretrained(model, export_dir)
  mesh = parallel.make_mesh({"data": -1})
  rep = NamedSharding(mesh, P())
  tx = train.make_optimizer(optim_cfg(), 1000)
  state, state_sh = train.create_train_state(model, tx, mesh, seed=args.seed,
                                             with_reference=BETA > 0)
  del model  # the state holds its own copies
  bsh = train.batch_sharding(mesh)
  hp, settings = grpo_hparams(w), rollout_settings(w)
  reward = even_token_reward()
  reward_states = [reward.state]
  batch = train.put_batch({"prompt_tokens": prompts,
                           "prompt_mask": np.ones(prompts.shape, bool)}, bsh)
  step = train.jit_rl_step(train.grpo_step, state_sh, bsh, reward_states, hp=hp,
                           rollout=settings, rewards=(reward,))
  holder = {"state": state}
  del state

  def fused():
    holder["state"], metrics = step(holder["state"], batch, reward_states)
    return metrics

  _common.log("rankjax: fused GRPO step, first call (compiles)")
  first_s, first_metrics = _common.timed(fused)
  # Before the pieces compile and run: the fused step's own peak.
  step_rss = own_peak_rss_mb()
  metrics = {k: float(v) for k, v in first_metrics.items()}
  if metrics["completion_length"] != w.new_tokens or metrics["truncated_fraction"] != 1.0:
    raise RuntimeError(f"completions were not forced to {w.new_tokens} tokens: {metrics}")

  # The pieces, each jitted apart, on the samples of one sampling call.
  sample_j = jax.jit(functools.partial(sample_piece, hp=hp, settings=settings))
  score_j = jax.jit(functools.partial(score_piece, hp=hp, rewards_=(reward,)))
  ref_j = jax.jit(reference_piece)
  update_j = jax.jit(functools.partial(update_piece, hp=hp, max_new_tokens=w.new_tokens),
                     in_shardings=(state_sh, None), out_shardings=(state_sh, rep),
                     donate_argnums=0)
  out = sample_j(holder["state"], batch)
  ro, adv = score_j(batch, out, reward_states)
  ref = ref_j(holder["state"], ro)
  data = dict(prompt=ro.prompt, prompt_mask=ro.prompt_mask, completion=ro.completion,
              completion_mask=ro.completion_mask, model_mask=ro.model_mask,
              loss_mask=ro.model_mask & ro.valid[:, None],
              old=ro.logprobs, adv=adv, ref=ref)

  def update():
    holder["state"], loss = update_j(holder["state"], data)
    return loss

  # The step, its pieces and the peak probe in alternation, so that load
  # from other processes on a shared machine hits them alike.
  _common.log("rankjax: the step and its pieces, in alternation")
  fns = {"step": fused,
         "sample": lambda: sample_j(holder["state"], batch).tokens,
         "score": lambda: score_j(batch, out, reward_states),
         "reference": lambda: ref_j(holder["state"], ro),
         "update": update,
         "peak": _peak_probe(256 if args.tiny else 2048, peaks)}
  pieces = _common.time_interleaved(fns, args.repeats, verbose=True)
  pieces.pop("peak")
  # The interleaved first call of the step was warm: keep the compiling one.
  step_t = dataclasses.replace(pieces.pop("step"), first_s=first_s)
  return {
      "step": step_t.as_dict(),
      "seconds_per_step": step_t.median_s,
      "pieces": {name: t.as_dict() for name, t in pieces.items()},
      "split_s": {name: t.median_s for name, t in pieces.items()},
      "split_cpu_s": {name: statistics.median(t.cpu_times_s) for name, t in pieces.items()},
      "pieces_sum_s": sum(t.median_s for t in pieces.values()),
      "peak_rss_mb": step_rss,
      "peak_rss_with_pieces_mb": own_peak_rss_mb(),
      "device_memory": _common.device_memory(),
      "metrics": metrics,
  }


# ---------------------------------------------------------------------------
# TRL, in a subprocess.
# ---------------------------------------------------------------------------


# What the TRL comparison imports (the `bench` extra installs them).
TRL_MODULES = ("datasets", "torch", "transformers", "trl")


def word_tokenizer(vocab: int):
  """A transformers tokenizer whose word `<i>` is token i (no special
  tokens added): TRL then sees exactly rankjax's prompt ids. (Delimited
  words: special tokens match as substrings, so pad `t0` would split `t07`.)"""
  import tokenizers
  import transformers
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {f"<{i}>": i for i in range(vocab)}, unk_token="<0>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<0>",
                                              pad_token="<0>", eos_token="<1>")


def prompt_text(ids) -> str:
  return " ".join(f"<{int(i)}>" for i in ids)


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
  """TRL's GRPOTrainer on the saved model; `spec` from `_trl_spec`."""
  rss_before = own_peak_rss_mb()
  import datasets
  import torch
  import transformers
  import trl
  torch.set_num_threads(spec["threads"])
  torch.manual_seed(spec["seed"])
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  datasets.disable_progress_bars()
  w = Workload(**spec["workload"])
  tokenizer = word_tokenizer(spec["vocab_size"])
  prompts = [prompt_text(row) for row in spec["prompts"]]
  if tokenizer(prompts[0])["input_ids"] != list(spec["prompts"][0]):
    raise RuntimeError("the word tokenizer does not reproduce the prompt ids")
  dataset = datasets.Dataset.from_dict({"prompt": prompts})
  config = trl.GRPOConfig(
      output_dir=spec["output_dir"], use_cpu=True, use_vllm=False, seed=spec["seed"],
      per_device_train_batch_size=w.rows, gradient_accumulation_steps=1,
      num_generations=w.group, max_completion_length=w.new_tokens,
      generation_kwargs={"min_new_tokens": w.new_tokens},  # forced length
      temperature=1.0, top_p=1.0, top_k=0, beta=BETA, num_iterations=NUM_ITERATIONS,
      loss_type=AGGREGATION, scale_rewards="group", learning_rate=LEARNING_RATE,
      lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
      adam_beta2=0.999, max_grad_norm=1.0, max_steps=1 + spec["repeats"],
      shuffle_dataset=False, logging_strategy="no", save_strategy="no", report_to="none",
      disable_tqdm=True, bf16=False, fp16=False, dataloader_pin_memory=False,
      model_init_kwargs={"dtype": torch.float32})

  steps: list[float] = []
  cpu: list[float] = []

  class StepTimer(transformers.TrainerCallback):
    def on_step_begin(self, *_, **__):
      self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_step_end(self, *_, **__):
      steps.append(time.perf_counter() - self.t0)
      cpu.append(time.process_time() - self.c0)

  trainer = trl.GRPOTrainer(model=spec["model_dir"], reward_funcs=even_tokens, args=config,
                            train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[StepTimer()])
  split = _time_trl_pieces(trainer)
  lengths: list[int] = []
  reward_fn = trainer.reward_funcs[0]

  def counting(*a, completion_ids, **kw):
    lengths.extend(len(ids) for ids in completion_ids)
    return reward_fn(*a, completion_ids=completion_ids, **kw)

  counting.__name__ = reward_fn.__name__
  trainer.reward_funcs[0] = counting
  trainer.train()
  if len(steps) != 1 + spec["repeats"]:
    raise RuntimeError(f"TRL ran {len(steps)} steps, expected {1 + spec['repeats']}")
  if set(lengths) != {w.new_tokens}:
    raise RuntimeError(f"TRL completions were not forced to {w.new_tokens}: {sorted(set(lengths))}")
  timing = _common.Timing(steps[0], steps[1:], cpu[1:])
  pieces = {k: float(np.median(v[1:])) for k, v in split.items()}
  pieces["update"] = max(0.0, timing.median_s - sum(pieces.values()))
  return {"step": timing.as_dict(), "seconds_per_step": timing.median_s,
          "split_s": {k: pieces[k] for k in PIECES}, "peak_rss_mb": own_peak_rss_mb(),
          "rss_before_torch_mb": rss_before, "versions": {
              "trl": trl.__version__, "transformers": transformers.__version__,
              "torch": torch.__version__}}


def _time_trl_pieces(trainer) -> dict[str, list[float]]:
  """Wrap the trainer's generation, reward and reference-forward calls
  (instance attributes shadow the methods) to time them per step."""
  split: dict[str, list[float]] = {"sample": [], "score": [], "reference": []}

  def wrap(name, fn, when=lambda *a, **kw: True):
    def timed(*a, **kw):
      if not when(*a, **kw):
        return fn(*a, **kw)
      t0 = time.perf_counter()
      out = fn(*a, **kw)
      split[name].append(time.perf_counter() - t0)
      return out
    return timed

  trainer._generate = wrap("sample", trainer._generate)
  trainer._calculate_rewards = wrap("score", trainer._calculate_rewards)
  trainer._get_per_token_logps_and_entropies = wrap(
      "reference", trainer._get_per_token_logps_and_entropies,
      when=lambda model, *a, **kw: model is trainer.ref_model)
  return split


def _trl_spec(model_dir: str, out_dir: str, prompts: np.ndarray, cfg, w: Workload,
              args, threads: int) -> dict[str, Any]:
  return {"model_dir": model_dir, "output_dir": out_dir, "prompts": prompts.tolist(),
          "vocab_size": cfg.vocab_size, "workload": dataclasses.asdict(w),
          "repeats": args.repeats, "seed": args.seed, "threads": threads}


def run_trl_child(spec: dict[str, Any], tmp: str) -> dict[str, Any]:
  """`run_trl` in a fresh interpreter with the same thread pinning."""
  path = os.path.join(tmp, "trl_spec.json")
  with open(path, "w") as f:
    json.dump(spec, f)
  cmd = [sys.executable, "-m", "rankjax.bench", "grpo", "--threads", str(spec["threads"]),
         "--trl-child", path]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"TRL GRPO step failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def floors(flops: dict[str, dict[str, float]], peak_gflops: float) -> dict[str, Any]:
  out = {}
  for kind, per_piece in flops.items():
    total = sum(per_piece.values())
    out[kind] = {"gflop": {k: v / 1e9 for k, v in per_piece.items()},
                 "gflop_total": total / 1e9,
                 "piece_s": {k: v / 1e9 / peak_gflops for k, v in per_piece.items()},
                 "seconds": total / 1e9 / peak_gflops}
  return out


def fractions(r: dict[str, Any]) -> dict[str, float]:
  rj, floor = r["rankjax"], r["floor"]["floor"]
  f = {"floor_fraction": floor["seconds"] / rj["seconds_per_step"],
       "full_sequence_floor_fraction": (r["floor"]["full_sequence"]["seconds"]
                                        / rj["seconds_per_step"]),
       "pieces_sum_vs_step": rj["pieces_sum_s"] / rj["seconds_per_step"]}
  for piece in PIECES:
    if floor["piece_s"][piece]:
      f[f"{piece}_floor_fraction"] = floor["piece_s"][piece] / rj["split_s"][piece]
  if r.get("trl"):
    f["vs_trl"] = r["trl"]["seconds_per_step"] / rj["seconds_per_step"]
  return f


def report(r: dict[str, Any]) -> str:
  w, m, rj, trl = r["workload"], r["machine"], r["rankjax"], r.get("trl")
  head = (f"grpo benchmark: {r['model']['params_m']:.1f}M params "
          f"({r['model']['matmul_params_m']:.1f}M in matmuls), {w['batch']} prompts x "
          f"{w['group']} completions x {w['new_tokens']} new tokens (forced), prompt "
          f"{w['prompt_len']}, mu={NUM_ITERATIONS}, beta={BETA}, {m['threads']} threads, "
          f"matmul peak {m['matmul_gflops']:.1f} GFLOP/s")
  def row(name, res):
    return [name, res["seconds_per_step"], res["step"]["cpu_median_s"],
            res["step"]["compile_s"], res["peak_rss_mb"]]

  rows = [row("rankjax", rj), row("TRL", trl) if trl else ["TRL", r["trl_status"], "-", "-", "-"]]
  # CPU seconds (all threads) tell load from other processes apart: on a
  # shared machine wall >> CPU / threads means the step waited for a core.
  systems = _common.format_table(rows, ["system", "s/step", "CPU s/step", "1st-step extra s",
                                        "peak RSS MB"])
  f = r["fractions"]
  ratio = (f"TRL / rankjax: {f['vs_trl']:.2f}x" if "vs_trl" in f
           else f"TRL / rankjax: - (TRL {r['trl_status']})")
  fl = r["floor"]["floor"]
  split_rows = [["rankjax (pieces jitted apart)", *[rj["split_s"][p] for p in PIECES],
                 rj["pieces_sum_s"], rj["seconds_per_step"]],
                ["rankjax, CPU s (all threads)", *[rj["split_cpu_s"][p] for p in PIECES],
                 sum(rj["split_cpu_s"].values()), rj["step"]["cpu_median_s"]]]
  if trl:
    split_rows.append(["TRL (timed inside its step)", *[trl["split_s"][p] for p in PIECES],
                       sum(trl["split_s"].values()), trl["seconds_per_step"]])
  split_rows.append(["FLOP floor", *[fl["piece_s"][p] for p in PIECES], fl["seconds"], "-"])
  split = _common.format_table(split_rows, ["seconds", *PIECES, "sum", "step"])
  floor_line = (f"FLOP floor {fl['gflop_total']:.0f} GFLOP = {fl['seconds']:.2f} s "
                f"(full sequence: {r['floor']['full_sequence']['gflop_total']:.0f} GFLOP = "
                f"{r['floor']['full_sequence']['seconds']:.2f} s); rankjax step at "
                f"{f['floor_fraction']:.2f} of the floor; pieces at the floor: "
                + ", ".join(f"{p} {f[p + '_floor_fraction']:.2f}" for p in PIECES
                            if p + "_floor_fraction" in f))
  targets = _common.format_table(
      [[t["what"], t["measured"], t["target"], "PASS" if t["pass"] else "MISS"]
       for t in r["targets"].values()], ["target", "measured", "needed", ""])
  return "\n".join([head, "", systems, ratio, "", split, floor_line, "", targets])


# ---------------------------------------------------------------------------
# --env: the environment's overhead on sampling.
# ---------------------------------------------------------------------------


# The overhead an in-graph environment may add over the same buffer without it.
ENV_TARGET = ("env_overhead", 1.15, "traceable env time / no-env time, same tokens <=")
# Tokens that also end a turn in the "staggered" regime: the random model
# writes one of them about once in ten tokens, so turns end at different
# steps in different rows, as they do for a trained model.
STAGGER_CHARS = "0123456789"
REGIMES = ("budget", "staggered")


def make_env(name: str, tok, rows: int, w: Workload, turn_tokens: int, regime: str = "budget",
             observations: str = "forced"):
  limits = envs.Limits(max_turns=w.new_tokens, turn_max_tokens=turn_tokens,
                       max_observation_tokens=12, observations=observations)
  stagger = regime == "staggered"
  if name == "calculator":
    env = envs.calculator(tok, limits)
    if stagger:
      env = dataclasses.replace(
          env, turn_ends=env.turn_ends + tuple((tok.char_id(c),) for c in STAGGER_CHARS))
    return env
  calc = envs.HostCalculator()
  if stagger:   # the host protocol's own form: turn_end may be a tuple of texts
    calc.turn_end = (calc.turn_end, *STAGGER_CHARS)
  return envs.host(calc, tok, [{}] * rows, limits)


def env_settings(w: Workload, env) -> train.RolloutSettings:
  return train.RolloutSettings(SampleCfg(max_new_tokens=w.new_tokens, temperature=1.0),
                               eos_ids=(), pad_id=0, env=env)


def check_forced(out: sampling.SampleOutput, w: Workload, name: str) -> None:
  lengths = np.asarray(out.lengths)
  if not (lengths == w.new_tokens).all():
    raise RuntimeError(f"{name}: rows were not forced to {w.new_tokens} tokens: {lengths}")


def _variant(regime: str, observations: str) -> str:
  return f"{regime}/{observations}"


def run_env(args, w: Workload) -> dict[str, Any]:
  """Sampling with `args.env` (both turn regimes, both ways of writing
  observations) against without it, timed in alternation."""
  tok = CharTokenizer()
  cfg = dataclasses.replace(model_config(args), vocab_size=tok.vocab_size)
  model = random_model(cfg, args.seed)
  rng = np.random.default_rng(args.seed)
  prompts = rng.integers(3, tok.vocab_size, (w.batch, w.prompt_len)).astype(np.int32)
  batch = {"prompt_tokens": jnp.asarray(prompts),
           "prompt_mask": jnp.ones(prompts.shape, bool),
           "example_index": jnp.arange(w.batch, dtype=jnp.int32)}
  key = jax.random.key(args.seed)
  settings = {"no env": env_settings(w, None)}
  for regime in REGIMES:
    for observations in envs.OBSERVATIONS:
      env = make_env(args.env, tok, w.batch, w, args.turn_tokens, regime, observations)
      settings[_variant(regime, observations)] = env_settings(w, env)
  fns = {}
  for name, s in settings.items():
    sample = jax.jit(functools.partial(train.sample_completions, settings=s,
                                       group_size=w.group))
    fns[name] = functools.partial(sample, model, batch, key)
  timings = _common.time_interleaved(fns, args.repeats, verbose=True)
  plain = timings["no env"]
  check_forced(plain.first_output, w, "no env")
  variants = {}
  for name, t in timings.items():
    if name == "no env":
      continue
    check_forced(t.first_output, w, name)
    out = t.first_output
    turns = np.asarray(out.turns)
    row_turns = int(turns.sum())
    extra_s = t.median_s - plain.median_s
    # Decode steps where some row's turn ended: one io_callback each (host).
    turn_end_steps = _turn_end_steps(out, settings[name].env.limits.observations)
    variants[name] = {
        "seconds": t.median_s, "times_s": t.times_s, "compile_s": t.compile_s,
        "overhead": t.median_s / plain.median_s, "overhead_best": t.best_s / plain.best_s,
        "row_turns": row_turns, "turns_per_row": row_turns / turns.size,
        "turn_end_steps": turn_end_steps,
        "model_token_fraction": float(np.asarray(out.generated).mean()),
        "error_rate": float(np.asarray(out.env_errors).sum()) / max(row_turns, 1),
        "extra_ms_per_row_turn": 1e3 * extra_s / max(row_turns, 1),
        "extra_ms_per_callback": 1e3 * extra_s / max(turn_end_steps, 1)}
  default = variants[_variant("budget", "forced")]
  result = {
      "env": args.env, "turn_tokens": args.turn_tokens,
      "model": {"params_m": cfg.num_params / 1e6, "vocab_size": cfg.vocab_size,
                "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers},
      "workload": dataclasses.asdict(w) | {"repeats": args.repeats, "forced": True},
      "no_env": {"seconds": plain.median_s, "times_s": plain.times_s,
                 "compile_s": plain.compile_s},
      "variants": variants,
      # The default path (observations forced), turns ended by the budget.
      "env_overhead": default["overhead"],
      "env_overhead_best": default["overhead_best"],
      "extra_ms_per_callback": default["extra_ms_per_callback"],
  }
  if args.env == "calculator":
    key, most, what = ENV_TARGET
    result["targets"] = {key: {"measured": result[key], "target": most, "what": what,
                               "pass": result[key] <= most}}
  return result


def _turn_end_steps(out: sampling.SampleOutput, observations: str) -> int:
  """Distinct decode steps at which some row's turn ended (for a host env,
  its io_callbacks). A turn end is a model token followed by an observation
  (every calculator turn gets one). A token at column c was sampled at step
  c when observations are forced (each takes a step), and at step = the
  number of model tokens before it when they are prefilled (they take none)."""
  gen = np.asarray(out.generated)
  lengths = np.asarray(out.lengths)
  cols = np.arange(gen.shape[1])
  ends = gen[:, :-1] & ~gen[:, 1:] & (cols[None, 1:] < lengths[:, None])
  step = (np.broadcast_to(cols, gen.shape) if observations == "forced"
          else np.cumsum(gen, axis=1) - 1)[:, :-1]
  return len(set(step[ends].tolist()))


def env_report(r: dict[str, Any]) -> str:
  w = r["workload"]
  head = (f"sampling with env {r['env']!r} vs none: {r['model']['params_m']:.1f}M params "
          f"(char vocab {r['model']['vocab_size']}), {w['batch']} prompts x {w['group']} "
          f"samples x {w['new_tokens']} tokens (forced), prompt {w['prompt_len']}, turns of "
          f"at most {r['turn_tokens']} model tokens ('staggered': a digit also ends a "
          f"turn), {w['repeats']} alternated repeats (medians)")
  rows = [["no env", "-", r["no_env"]["seconds"], 1.0, "-", "-", r["no_env"]["compile_s"]]]
  for name, v in r["variants"].items():
    rows.append([name, f"{v['turns_per_row']:.1f}", v["seconds"], v["overhead"],
                 f"{v['model_token_fraction']:.0%}", f"{v['extra_ms_per_callback']:.2f}",
                 v["compile_s"]])
  table = _common.format_table(
      rows, ["turns / observations", "turns/row", "s", "x no env", "model tokens",
             "extra ms/turn-end step", "compile s"])
  lines = [head, "", table, "",
           "x no env: time for the same buffer of tokens (model + observations) over the "
           "time without an environment; prefill writes each observation as one chunk, "
           "forced spends a decode step per observation token"]
  if "targets" in r:
    t = r["targets"][ENV_TARGET[0]]
    lines.append(f"target: overhead <= {ENV_TARGET[1]}x (budget/forced): "
                 f"{'PASS' if t['pass'] else 'MISS'} ({r['env_overhead']:.3f}x)")
  return "\n".join(lines)


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(list(sys.argv[1:] if argv is None else argv))
  if args.trl_child:
    absent = _common.missing(TRL_MODULES, "bench")
    if absent:
      raise SystemExit(f"--trl-child runs TRL, which needs {absent}")
    with open(args.trl_child) as f:
      print(json.dumps(run_trl(json.load(f)), default=float))
    return {}
  threads = _common.pin_threads(args.threads)
  if args.env:
    result = {"benchmark": "grpo --env", **run_env(args, workload(args)), "machine": threads}
    print(env_report(result))
    _common.emit_json(result, args.json_path)
    return result
  cfg, w = model_config(args), workload(args)
  prompts = make_prompts(cfg.vocab_size, w, args.seed)
  peaks: list[float] = []
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = os.path.join(tmp, "model")
    rj = run_rankjax(cfg, w, prompts, args, peaks, None if args.no_trl else model_dir)
    trl_res, trl_status = None, "skipped (--no-trl)"
    if not args.no_trl:
      absent = _common.missing(TRL_MODULES, "bench")
      if absent is None:
        _common.log("TRL: GRPOTrainer in a subprocess")
        trl_res = run_trl_child(_trl_spec(model_dir, os.path.join(tmp, "trl"), prompts, cfg,
                                          w, args, threads["threads"]), tmp)
        trl_status = "ran"
      else:
        _common.log(f"TRL comparison skipped: {absent}")
        trl_status = f"not installed ({absent})"
  peak = max(peaks)
  machine = dict(threads, matmul_gflops=peak, matmul_probes_gflops=peaks)
  result = {
      "benchmark": "grpo",
      "model": {"params_m": cfg.num_params / 1e6, "matmul_params_m": matmul_params(cfg) / 1e6,
                **{k: getattr(cfg, k) for k in (
                    "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                    "num_heads", "num_kv_heads", "head_dim", "dtype")}},
      "workload": dataclasses.asdict(w) | {
          "repeats": args.repeats, "num_iterations": NUM_ITERATIONS, "beta": BETA,
          "learning_rate": LEARNING_RATE, "aggregation": AGGREGATION, "forced": True,
          "completion_tokens": w.completion_tokens},
      "machine": machine,
      "rankjax": rj,
      "trl": trl_res,
      "trl_status": trl_status,
      "floor": floors(step_flops(cfg, w), peak),
  }
  result["fractions"] = fractions(result)
  result["targets"] = _common.check_targets(result["fractions"], TARGETS)
  print(report(result))
  _common.emit_json(result, args.json_path)
  return result


if __name__ == "__main__":
  main()
