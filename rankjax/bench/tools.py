"""Multi-turn GRPO with a calculator against single-turn GRPO, from one SFT
model: held-out pass@1 / pass@k / greedy and the tool-call rate of each.

    python -m rankjax.bench tools [--sft-steps 2500] [--grpo-steps 200]
        [--problems 200] [--seed 0] [--workdir DIR] [--tiny] [--json PATH]

The recipe is `configs/grpo_tools_arith.py` (4-to-6-digit addition, SFT on
worked answers of which 60% call the calculator). One SFT model is trained;
then two GRPO runs start from it with the same prompts, seed and step count:
"grpo+calculator" samples with the traceable calculator in the decode loop
(`env.name="calculator"`), "grpo single-turn" without it (`env.name=""`).
Every model is evaluated on the same held-out problems with the same
sampling keys: the calculator run and the "sft+calculator" row with the
calculator available, the single-turn run and the "sft" row without it.
turn_rate is the share of eval samples that called the tool.

Plot: `<workdir>/reward_curve.png`, both runs' mean reward and tool-call
rate (`env/turn_rate`) per GRPO step.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from rankjax import config as config_lib, inference
from rankjax import run as run_lib
from rankjax.bench import _common

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "grpo_tools_arith.py"
REWARD_KEY = "reward"
TURN_KEY = "env/turn_rate"


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m rankjax.bench tools")
  p.add_argument("--sft-steps", type=int, default=2500)
  p.add_argument("--grpo-steps", type=int, default=200)
  p.add_argument("--problems", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default="")
  p.add_argument("--tiny", action="store_true",
                 help="a seconds-long smoke run (tests): tiny model, steps and problems")
  _common.add_common_args(p)
  return p.parse_args(argv)


def base_config(args) -> config_lib.Config:
  """The calculator recipe with this benchmark's step counts."""
  cfg = config_lib.load(str(RECIPE))
  cfg = dataclasses.replace(
      cfg, seed=args.seed, log_every=max(1, args.grpo_steps // 40),
      sft=dataclasses.replace(cfg.sft, steps=args.sft_steps),
      grpo=dataclasses.replace(cfg.grpo, steps=args.grpo_steps),
      eval=dataclasses.replace(cfg.eval, num_problems=args.problems),
      checkpoint=dataclasses.replace(cfg.checkpoint, export_hf=False))
  if args.tiny:
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, hidden_size=32, num_layers=1, num_heads=2,
                                       num_kv_heads=1, head_dim=16, intermediate_size=64),
        grpo=dataclasses.replace(cfg.grpo, num_prompts=4, group_size=4),
        eval=dataclasses.replace(cfg.eval, num_samples=4))
  return cfg


def with_env(cfg: config_lib.Config, name: str) -> config_lib.Config:
  return config_lib.validate(dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, name=name)))


def curve(rows: list[dict], key: str) -> list[tuple[int, float]]:
  return [(r["step"], float(r[key])) for r in rows if key in r and "step" in r]


def train_grpo(base: run_lib.Run, cfg, workdir: Path) -> dict[str, Any]:
  """GRPO from the SFT model with `cfg`, then evaluation (with `cfg.env`)."""
  run = run_lib.Run(cfg=dataclasses.replace(cfg, pipeline=("grpo", "eval")), workdir=workdir,
                    task=base.task, tokenizer=base.tokenizer, model=base.model)
  workdir.mkdir(parents=True, exist_ok=True)
  run_lib.STAGES["grpo"](run)
  run_lib.STAGES["eval"](run)
  rows = inference.read_metrics(workdir / "metrics.jsonl")
  return {"eval": run.summary["grpo"], "pass_at_k_curve": run.summary["pass_at_k_curves"]["grpo"],
          "reward_curve": curve(rows, REWARD_KEY),
          "turn_rate_curve": curve(rows, TURN_KEY),
          "train_seconds": run.summary["grpo"].get("seconds")}


def eval_sft(base: run_lib.Run, cfg, workdir: Path) -> dict[str, Any]:
  """The SFT model evaluated under `cfg` (its env or none)."""
  run = run_lib.Run(cfg=dataclasses.replace(cfg, pipeline=("sft", "eval")), workdir=workdir,
                    task=base.task, tokenizer=base.tokenizer, model=base.model)
  workdir.mkdir(parents=True, exist_ok=True)
  run_lib.STAGES["eval"](run)
  return {"eval": run.summary["sft"], "pass_at_k_curve": run.summary["pass_at_k_curves"]["sft"]}


def plot(results: dict[str, Any], out_png: Path) -> str:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(9, 4), dpi=100)
  FigureCanvasAgg(fig)
  reward_ax, turn_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  for name, r in results.items():
    for ax, points in ((reward_ax, r.get("reward_curve")), (turn_ax, r.get("turn_rate_curve"))):
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, label=name)
  reward_ax.set_ylabel("mean reward (correct)")
  turn_ax.set_ylabel("tool-call rate (env/turn_rate)")
  for ax in (reward_ax, turn_ax):
    ax.set_xlabel("GRPO step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(out_png)
  return str(out_png)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(list(argv or []))
  if args.tiny:
    args.sft_steps, args.grpo_steps, args.problems = min(args.sft_steps, 20), min(
        args.grpo_steps, 4), min(args.problems, 8)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(args.workdir or tmp)
    cfg = base_config(args)
    tool_cfg, plain_cfg = with_env(cfg, "calculator"), with_env(cfg, "")
    _common.log(f"SFT: {args.sft_steps} steps (eval with the calculator)")
    base = run_lib.execute(dataclasses.replace(tool_cfg, pipeline=("sft", "eval")),
                           workdir / "sft")
    results = {"sft+calculator": {"eval": base.summary["sft"],
                                  "pass_at_k_curve": base.summary["pass_at_k_curves"]["sft"]}}
    _common.log("SFT eval without the calculator")
    results["sft"] = eval_sft(base, plain_cfg, workdir / "sft_plain")
    _common.log(f"GRPO with the calculator: {args.grpo_steps} steps")
    results["grpo+calculator"] = train_grpo(base, tool_cfg, workdir / "grpo_calculator")
    _common.log(f"GRPO single-turn: {args.grpo_steps} steps")
    results["grpo single-turn"] = train_grpo(base, plain_cfg, workdir / "grpo_single")
    plots = {"reward_curve": plot(results, workdir / "reward_curve.png")} if args.workdir else {}

  k = cfg.eval.num_samples
  keys = ["pass@1", f"pass@{k}", "greedy", "turn_rate", "mean_turns"]
  rows = [[name, *[r["eval"].get(key) for key in keys], r.get("train_seconds")]
          for name, r in results.items()]
  gain = (results["grpo+calculator"]["eval"]["pass@1"]
          - results["grpo single-turn"]["eval"]["pass@1"])
  print(f"calculator vs single-turn GRPO from one SFT model ({args.sft_steps} steps): "
        f"{args.grpo_steps} GRPO steps x {cfg.grpo.num_prompts} prompts x "
        f"{cfg.grpo.group_size} samples; eval {args.problems} held-out problems x {k} samples")
  print(_common.format_table(rows, ["model", *keys, "GRPO s"]))
  print(f"pass@1 gain of calculator GRPO over single-turn GRPO: {gain:+.3f}")
  result = {"benchmark": "tools", "args": vars(args), "results": results,
            "pass_at_1_gain": gain, "plots": plots,
            "machine": _common.thread_report(_common.available_cpus())}
  _common.emit_json(result, args.json_path)
  return result
