"""GRPO objectives side by side, from one SFT model: held-out pass@1 /
pass@k, the Kendall τ curve and the step time of each.

    python -m rankjax.bench objectives [--objectives "clipped;softmax;clipped,softmax;..."]
        [--listwise-beta 0.1] [--sft-steps 3000] [--grpo-steps 800]
        [--problems 200] [--workdir DIR] [--tiny] [--json PATH]

The default run's recipe (`rankjax/demo.py`: 2-digit addition, SFT on
demonstrations half of whose answers are wrong, then GRPO with the
in-graph verifier) trains one SFT model; each objective then trains a copy
for the same GRPO steps on the same prompts with the same samples per step
(`grpo.objective`, one `;`-separated entry per run, each a `,`-separated
list: "clipped" is the clipped surrogate, the others listwise losses on the
implicit rewards β·log(π/π_ref) of each group ranked by reward). Every model
is evaluated on the same held-out problems with the same sampling keys:
pass@1, pass@k, maj@k, soft best-of-k at the listwise β, and the mean
Kendall τ (policy likelihood vs reward, per group) over the last tenth of
training. Plots: `<workdir>/tau.png` (τ per step) and `<workdir>/pass_at_k.png`.

Step time: after training, each objective's compiled step is timed in
alternation on the SFT model (`--repeats` steps each, median), and the
listwise loss alone (forward and backward of `losses.listwise_loss` on one
step's [B, G] log-probs) is timed against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import config as config_lib, inference, losses, parallel, rewards as rewards_lib
from rankjax import run as run_lib, train
from rankjax.bench import _common

_DEFAULT_OBJECTIVES = "clipped;softmax;clipped,softmax;lipo_lambda"


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m rankjax.bench objectives")
  p.add_argument("--objectives", default=_DEFAULT_OBJECTIVES,
                 help="';'-separated runs, each a ','-separated grpo.objective")
  p.add_argument("--weights", default="",
                 help="';'-separated grpo.objective_weights per run (empty: all 1)")
  p.add_argument("--listwise-beta", type=float, default=0.1)
  p.add_argument("--sft-steps", type=int, default=3000)
  p.add_argument("--grpo-steps", type=int, default=800)
  p.add_argument("--problems", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default="")
  p.add_argument("--tiny", action="store_true",
                 help="a seconds-long smoke run (tests): tiny steps and problems")
  _common.add_common_args(p)
  return p.parse_args(argv)


def base_config(args) -> config_lib.Config:
  """The default run's recipe with this benchmark's step counts."""
  cfg = config_lib.load(None)
  cfg = dataclasses.replace(
      cfg, seed=args.seed, log_every=max(1, args.grpo_steps // 40),
      sft=dataclasses.replace(cfg.sft, steps=args.sft_steps),
      grpo=dataclasses.replace(cfg.grpo, steps=args.grpo_steps,
                               listwise_beta=args.listwise_beta),
      eval=dataclasses.replace(cfg.eval, num_problems=args.problems),
      checkpoint=dataclasses.replace(cfg.checkpoint, export_hf=False))
  if args.tiny:
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, hidden_size=32, num_layers=1, num_heads=2,
                                       num_kv_heads=1, head_dim=16, intermediate_size=64),
        grpo=dataclasses.replace(cfg.grpo, num_prompts=4, group_size=4),
        eval=dataclasses.replace(cfg.eval, num_samples=4))
  return cfg


def objectives(args) -> list[tuple[tuple[str, ...], tuple[float, ...]]]:
  runs = [tuple(o.strip() for o in entry.split(",") if o.strip())
          for entry in args.objectives.split(";") if entry.strip()]
  weights = [tuple(float(w) for w in entry.split(",") if w.strip())
             for entry in args.weights.split(";")] if args.weights else [()] * len(runs)
  if len(weights) != len(runs):
    raise SystemExit(f"--weights has {len(weights)} entries for {len(runs)} objectives")
  return list(zip(runs, weights))


def label(objective, weights) -> str:
  if not weights:
    return "+".join(objective)
  return "+".join(f"{w:g}*{o}" for o, w in zip(objective, weights))


def train_objective(base: run_lib.Run, cfg, workdir: Path) -> dict[str, Any]:
  """GRPO from the SFT model with `cfg.grpo`, then evaluation."""
  run = run_lib.Run(cfg=dataclasses.replace(cfg, pipeline=("grpo", "eval")), workdir=workdir,
                    task=base.task, tokenizer=base.tokenizer, model=base.model)
  workdir.mkdir(parents=True, exist_ok=True)
  run_lib.STAGES["grpo"](run)
  run_lib.STAGES["eval"](run)
  rows = inference.read_metrics(workdir / "metrics.jsonl")
  tau = [(r["step"], r["ranking/kendall_tau"]) for r in rows if "ranking/kendall_tau" in r]
  tail = [t for _, t in tau[-max(1, len(tau) // 10):]]
  return {"eval": run.summary["grpo"], "pass_at_k_curve": run.summary["pass_at_k_curves"]["grpo"],
          "tau_curve": tau, "tau_last_tenth": float(np.mean(tail)) if tail else float("nan"),
          "train_seconds": run.summary["grpo"].get("seconds")}


def step_times(base: run_lib.Run, cfgs: dict[str, Any], repeats: int) -> dict[str, Any]:
  """Median seconds of each objective's compiled GRPO step on the SFT model
  (timed in alternation), and of the listwise loss alone."""
  cfg0 = next(iter(cfgs.values()))
  mesh = parallel.make_mesh(cfg0.mesh)
  batches = train.PromptBatches(base.task.records("train"), base.tokenizer,
                                cfg0.grpo.num_prompts, cfg0.data.max_prompt_length,
                                seed=cfg0.seed,
                                encode=lambda r: base.task.prompt_ids(r, base.tokenizer))
  rewards = rewards_lib.from_names(cfg0.grpo.rewards, (), task=base.task,
                                   tokenizer=base.tokenizer, records=batches.records)
  states = [r.state for r in rewards]
  batch_sh = train.batch_sharding(mesh)
  batch = train.put_batch(next(batches), batch_sh)
  fns = {}
  for name, cfg in cfgs.items():
    tx = train.make_optimizer(cfg.optim, 1000)
    state, state_sh = train.create_train_state(base.model, tx, mesh, seed=cfg.seed,
                                               with_reference=True)
    step = train.jit_rl_step(train.grpo_step, state_sh, batch_sh, states, hp=cfg.grpo,
                             rollout=train.rollout_settings(cfg, base.tokenizer),
                             rewards=tuple(rewards))
    holder = {"state": state}

    def one(step=step, holder=holder):
      holder["state"], metrics = step(holder["state"], batch, states)
      return metrics
    fns[name] = one

  b, g = cfg0.grpo.num_prompts, cfg0.grpo.group_size
  rng = np.random.default_rng(0)
  logp, ref = (jnp.asarray(rng.normal(-8, 2, (b, g)), jnp.float32) for _ in range(2))
  reward = jnp.asarray(rng.integers(0, 2, (b, g)), jnp.float32)

  types = dict.fromkeys(o for cfg in cfgs.values() for o in cfg.grpo.objective if o != "clipped")
  for loss_type in types:
    @jax.jit
    def alone(logp, loss_type=loss_type):
      return jax.value_and_grad(lambda x: losses.listwise_loss(
          x, ref, reward, beta=cfg0.grpo.listwise_beta, loss_type=loss_type)[0])(logp)
    fns[f"{loss_type} loss alone"] = functools.partial(alone, logp)
  timings = _common.time_interleaved(fns, repeats, verbose=True)
  return {name: t.median_s for name, t in timings.items()}


def plot(results: dict[str, Any], workdir: Path) -> dict[str, str]:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name, r in results.items():
    if r.get("tau_curve"):
      steps, taus = zip(*r["tau_curve"])
      ax.plot(steps, taus, label=name)
  ax.set_xlabel("GRPO step")
  ax.set_ylabel("Kendall τ (likelihood vs reward, per group)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(workdir / "tau.png")
  curves = {name: r["pass_at_k_curve"] for name, r in results.items()}
  return {"tau": str(workdir / "tau.png"),
          "pass_at_k": str(inference.plot_pass_at_k(curves, workdir / "pass_at_k.png"))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(list(argv or []))
  if args.tiny:
    args.sft_steps, args.grpo_steps, args.problems = min(args.sft_steps, 20), min(
        args.grpo_steps, 4), min(args.problems, 8)
  runs = objectives(args)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(args.workdir or tmp)
    cfg = base_config(args)
    _common.log(f"SFT: {args.sft_steps} steps")
    base = run_lib.execute(dataclasses.replace(cfg, pipeline=("sft", "eval")), workdir / "sft")
    results = {"sft": {"eval": base.summary["sft"],
                       "pass_at_k_curve": base.summary["pass_at_k_curves"]["sft"]}}
    cfgs = {}
    for objective, weights in runs:
      name = label(objective, weights)
      cfgs[name] = dataclasses.replace(cfg, grpo=dataclasses.replace(
          cfg.grpo, objective=objective, objective_weights=weights))
      config_lib.validate(cfgs[name])
      _common.log(f"GRPO {name}: {args.grpo_steps} steps")
      results[name] = train_objective(base, cfgs[name], workdir / name.replace("*", "x"))
    _common.log("step times")
    times = step_times(base, cfgs, args.repeats)
    plots = plot(results, workdir) if args.workdir else {}

  k = cfg.eval.num_samples
  keys = ["pass@1", f"pass@{k}", f"maj@{k}", f"soft_best_of_{k}", f"pass_gap@{k}"]
  rows = []
  for name, r in results.items():
    e = r["eval"]
    rows.append([name, *[e.get(key) for key in keys], r.get("tau_last_tenth"),
                 times.get(name)])
  header = ["model", *keys, "tau (last 10%)", "step s"]
  print(f"GRPO objectives from one SFT model: {args.grpo_steps} steps x "
        f"{cfg.grpo.num_prompts} prompts x {cfg.grpo.group_size} samples; "
        f"eval {args.problems} problems x {k} samples; listwise beta {args.listwise_beta}")
  print(_common.format_table(rows, header))
  for name, cfg in cfgs.items():
    for loss_type in cfg.grpo.objective:
      if loss_type != "clipped":
        share = times[f"{loss_type} loss alone"] / times[name]
        print(f"{loss_type} loss (forward + backward) alone / {name} step: {share:.2%}")
  result = {"benchmark": "objectives", "args": vars(args), "results": results,
            "step_seconds": times, "plots": plots,
            "machine": _common.thread_report(_common.available_cpus())}
  _common.emit_json(result, args.json_path)
  return result
