"""The host loop: batches in, jitted step, metrics out, eval, checkpoints.

    step = jit_step(sft_step, state_shardings, batch_shardings, accum_steps=2)
    state, final = train_loop(state, step, batches, LoopConfig(steps=300),
                              writer=MetricsWriter(workdir, "sft"), ...)

Metrics stay on device between log steps (fetching them every step would
stall the dispatch queue), then are averaged over the interval (`nonfinite`
and `zero_target_batch` are summed: they count steps) and written to
`<workdir>/metrics.jsonl` (one JSON object per logged step, with `step`,
`stage` and the metric names), TensorBoard event files under
`<workdir>/tensorboard/<stage>`, and a one-line progress report with
tokens/s and ETA.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import parallel
from rankjax.train._state import put_batch

log = logging.getLogger("rankjax.train")

# Metrics that count steps in a logging interval (summed, not averaged).
_COUNTED = ("nonfinite", "zero_target_batch")


def jit_step(step_fn, state_shardings, batch_shardings, **hp):
  """`step_fn` with its hyper-parameters bound, jitted once with explicit
  shardings. The state is donated: params and optimizer moments are
  updated in place instead of doubling their memory."""
  mesh = jax.tree.leaves(batch_shardings)[0].mesh
  return jax.jit(functools.partial(step_fn, **hp),
                 in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, NamedSharding(mesh, P())),
                 donate_argnums=0)


def jit_eval(eval_fn, state_shardings, batch_shardings, **hp):
  """Like `jit_step` for an evaluation (no donation: the state lives on)."""
  mesh = jax.tree.leaves(batch_shardings)[0].mesh
  return jax.jit(functools.partial(eval_fn, **hp),
                 in_shardings=(state_shardings, batch_shardings),
                 out_shardings=NamedSharding(mesh, P()))


class MetricsWriter:
  """Appends to `<workdir>/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, workdir: str | Path, stage: str, *, tensorboard: bool = True):
    self.workdir = Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.stage = stage
    self._jsonl = open(self.workdir / "metrics.jsonl", "a")
    self._tb = None
    if tensorboard and jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(self.workdir / "tensorboard" / stage))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if jax.process_index() != 0:
      return
    row = {"step": int(step), "stage": self.stage}
    row.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{self.stage}/{k}", float(v), step)

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """`sft  120/300  40%  loss 0.412  1.2e+04 tok/s  ETA 0:00:31`."""

  def __init__(self, name: str, total: int, start: int = 0, stream=None,
               shown: tuple[str, ...] = ()):
    # None: whatever sys.stderr is when a line is printed (it may have been
    # redirected since this module was imported).
    self.name, self.total, self._stream, self.shown = name, total, stream, shown
    self._t0, self._s0 = time.perf_counter(), start

  def update(self, step: int, tokens_per_s: float, metrics: Mapping[str, float]) -> None:
    done = step - self._s0
    elapsed = time.perf_counter() - self._t0
    eta = elapsed / max(done, 1) * (self.total - step)
    shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in ("loss", *self.shown, "grad_norm")
                      if k in metrics)
    print(f"{self.name}  {step}/{self.total}  {100 * step / max(self.total, 1):.0f}%  "
          f"{shown}  {tokens_per_s:.3g} tok/s  ETA {_hms(eta)}",
          file=self._stream or sys.stderr, flush=True)


def _hms(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def num_tokens(batch: Mapping[str, np.ndarray]) -> int:
  """Token positions the step processes (all `*tokens` arrays)."""
  return sum(int(np.size(v)) for k, v in batch.items() if k.endswith("tokens"))


def reduce_metrics(window: list[Mapping[str, Any]]) -> dict[str, float]:
  """Host floats: counts summed over the interval, the rest averaged."""
  host = jax.device_get(window)
  out = {}
  for k in host[0]:
    values = np.asarray([m[k] for m in host], np.float64)
    out[k] = float(values.sum() if k in _COUNTED else values.mean())
  return out


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """steps: total updates; log/eval/checkpoint every N (0 = never; a final
  log, eval and checkpoint always happen); on_nonfinite: "skip" keeps going
  (the step already skipped the update), "stop" ends the stage."""
  name: str = "train"
  steps: int = 100
  log_every: int = 10
  eval_every: int = 0
  checkpoint_every: int = 0
  on_nonfinite: str = "skip"
  # Metrics the progress line shows next to the loss and gradient norm.
  shown: tuple[str, ...] = ()


def _due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


def train_loop(state, step_fn: Callable, batches: Iterator, cfg: LoopConfig, *,
               batch_shardings, writer: MetricsWriter | None = None,
               eval_fn: Callable[[Any], Mapping[str, float]] | None = None,
               checkpoints=None, schedule: Callable | None = None,
               start_step: int = 0, stop_requested: Callable[[], bool] | None = None):
  """Runs `cfg.steps` updates from `start_step`; returns (state, summary).

  summary: the last logged train metrics, `eval/*` of the last evaluation,
  `nonfinite_steps`, `zero_target_batches`, `tokens_per_s`, `steps`.
  stop_requested: polled after every step (SIGTERM/preemption): when it
  returns True the loop checkpoints the current step and returns early,
  with `summary["preempted"] = True`.
  """
  progress = Progress(cfg.name, cfg.steps, start_step, shown=cfg.shown)
  window, summary, totals = [], {}, {"nonfinite_steps": 0.0, "zero_target_batches": 0.0}
  tokens, t_last = 0, time.perf_counter()
  step = saved = start_step
  while step < cfg.steps:
    try:
      host_batch = next(batches)
    except StopIteration:
      log.warning("%s: data ran out after %d steps (of %d)", cfg.name, step, cfg.steps)
      break
    tokens += num_tokens(host_batch)
    state, metrics = step_fn(state, put_batch(host_batch, batch_shardings))
    step += 1
    window.append(metrics)
    cfg = _cut_short(cfg, step, metrics, stop_requested, summary)
    if _due(step, cfg.log_every, cfg.steps):
      now = time.perf_counter()
      logged = _interval(window, cfg.name, step, tokens / max(now - t_last, 1e-9), schedule)
      window, tokens, t_last = [], 0, now
      for key, name in (("nonfinite", "nonfinite_steps"), ("zero_target_batch",
                                                          "zero_target_batches")):
        totals[name] += logged.get(key, 0.0)
      if writer is not None:
        writer.write(step, logged)
      progress.update(step, logged["tokens_per_s"], logged)
      summary.update(logged)
    if eval_fn is not None and _due(step, cfg.eval_every, cfg.steps):
      evaluated = {f"eval/{k}": v for k, v in eval_fn(state).items()}
      if writer is not None:
        writer.write(step, evaluated)
      summary.update(evaluated)
    if checkpoints is not None and _due(step, cfg.checkpoint_every, cfg.steps):
      _save(checkpoints, step, state, batches, summary)
      saved = step
  if window:  # the data ran out: flush what was not logged
    summary.update(reduce_metrics(window))
  if checkpoints is not None and saved != step:  # ... and save where it stopped
    _save(checkpoints, step, state, batches, summary)
  summary.update(totals, steps=step)
  return state, summary


def _cut_short(cfg: LoopConfig, step: int, metrics, stop_requested, summary) -> LoopConfig:
  """`cfg` ending at `step` when a stop was requested (SIGTERM: the loop
  checkpoints and returns) or a non-finite update stops the stage."""
  if stop_requested is not None and stop_requested():
    log.warning("%s: stop requested at step %d: checkpointing and stopping", cfg.name, step)
    summary["preempted"] = True
    return dataclasses.replace(cfg, steps=step)
  if cfg.on_nonfinite == "stop" and float(metrics["nonfinite"]):
    log.error("%s: non-finite loss/gradient at step %d; stopping (on_nonfinite=stop)",
              cfg.name, step)
    return dataclasses.replace(cfg, steps=step)
  return cfg


def _interval(window, name: str, step: int, tokens_per_s: float,
              schedule: Callable | None) -> dict[str, float]:
  """The logged metrics of one interval (`reduce_metrics` plus throughput
  and learning rate), warning about empty targets and skipped updates."""
  logged = reduce_metrics(window)
  logged["tokens_per_s"] = tokens_per_s
  if schedule is not None:
    logged["learning_rate"] = float(schedule(step - 1))
  empty = logged.get("zero_target_batch", 0.0) + logged.get("zero_target_rows", 0.0)
  if empty:
    log.warning("%s: step %d: %d batch(es) / rows with no target tokens in the "
                "last interval (loss 0 for them)", name, step, int(empty))
  if logged.get("nonfinite", 0.0):
    log.warning("%s: step %d: %d update(s) skipped (non-finite loss or gradient)",
                name, step, int(logged["nonfinite"]))
  return logged


def _save(checkpoints, step, state, batches, summary) -> None:
  data_state = batches.get_state() if hasattr(batches, "get_state") else None
  checkpoints.save(step, state, data_state,
                   {k: v for k, v in summary.items() if _is_number(v)})


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def evaluate_batches(eval_step: Callable, state, batches, batch_shardings) -> dict[str, float]:
  """Mean of `eval_step` metrics over every batch of an (epoch) iterator."""
  # One eval program in flight at a time (`parallel.settled`): the batches
  # are independent of each other, so nothing else orders them.
  window = [parallel.settled(eval_step(state, put_batch(b, batch_shardings))) for b in batches]
  if not window:
    return {}
  out = reduce_metrics(window)
  out["batches"] = float(len(window))
  return out
