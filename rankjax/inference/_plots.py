"""PNG plots of a run: reward and ranking curves from metrics.jsonl, pass@k curves.

Figures are drawn on matplotlib's Agg canvas directly (`Figure` +
`FigureCanvasAgg`), so nothing here touches the global pyplot backend of a
notebook that imports rankjax. matplotlib is imported lazily: it is only
needed when a plot is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence


def _figure(width: float = 6.0, height: float = 4.0):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot(1, 1, 1)


def _save(fig, out_png) -> Path:
  out = Path(out_png)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(out, format="png")
  return out


def read_metrics(path) -> list[dict]:
  """The rows of a metrics.jsonl file (blank lines skipped)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Telemetry groups that mention rewards but have plots of their own.
_NOT_REWARDS = ("ranking/", "listwise/")
# The ranking telemetry plotted by `plot_ranking_curve` (all in [-1, 1]).
RANKING_KEYS = ("ranking/kendall_tau", "ranking/ndcg", "ranking/top_rank_fraction")


def reward_keys(rows: Sequence[dict]) -> list[str]:
  """Metric names containing "reward" with a numeric value in some row, in
  first-seen order (the ranking and listwise telemetry excluded)."""
  keys: dict[str, None] = {}
  for row in rows:
    for key, value in row.items():
      if ("reward" in key.lower() and not key.startswith(_NOT_REWARDS)
          and _is_number(value)):
        keys[key] = None
  return list(keys)


def ranking_keys(rows: Sequence[dict]) -> list[str]:
  """The `RANKING_KEYS` present (numeric) in some row."""
  return [k for k in RANKING_KEYS if any(_is_number(r.get(k)) for r in rows)]


def _segments(rows: Sequence[dict], key: str) -> list[tuple[str, list[float], list[float]]]:
  """(name, steps, values) runs of `key`; a new run starts where `step` goes
  back (the next pipeline stage restarts its step count). The name is the
  run's "stage" field when rows carry one, else its 1-based number."""
  runs: list[tuple[str, list[float], list[float]]] = []
  last = None
  for i, row in enumerate(rows):
    value = row.get(key)
    if not _is_number(value):
      continue
    step = row.get("step", i)
    if last is None or step <= last:
      runs.append((str(row.get("stage", len(runs) + 1)), [], []))
    runs[-1][1].append(step)
    runs[-1][2].append(value)
    last = step
  return runs


def plot_reward_curve(metrics_jsonl_path, out_png, keys: Sequence[str] | None = None) -> list[str]:
  """Plot reward metrics against `step` from a run's metrics.jsonl.

  keys: the metrics to draw (default: every metric whose name contains
  "reward"). A stage that restarts its step count starts a new line.
  Returns the keys drawn; raises ValueError when there are none.
  """
  rows = read_metrics(metrics_jsonl_path)
  keys = list(keys) if keys is not None else reward_keys(rows)
  return _plot_curves(rows, keys, out_png, "reward", metrics_jsonl_path)


def plot_ranking_curve(metrics_jsonl_path, out_png) -> list[str]:
  """Plot the online steps' ranking telemetry (`RANKING_KEYS`: Kendall τ and
  NDCG of the policy's likelihood ranking against the reward ranking, and
  where the policy's favourite sample ranks) against `step`."""
  rows = read_metrics(metrics_jsonl_path)
  return _plot_curves(rows, ranking_keys(rows), out_png, "likelihood vs reward ranking",
                      metrics_jsonl_path)


def _plot_curves(rows, keys, out_png, ylabel: str, source) -> list[str]:
  fig, ax = _figure()
  drawn = []
  for key in keys:
    runs = _segments(rows, key)
    for name, steps, values in runs:
      ax.plot(steps, values, label=key if len(runs) == 1 else f"{key} ({name})")
    if runs:
      drawn.append(key)
  if not drawn:
    raise ValueError(f"{source}: no {ylabel} metrics to plot (looked for {keys})")
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  _save(fig, out_png)
  return drawn


def plot_pass_at_k(curves: Mapping[str, Mapping], out_png) -> Path:
  """pass@k against k (log₂ axis), one line per name: `curves` maps a name
  (e.g. "sft", "grpo") to {k: pass@k} (keys may be JSON strings)."""
  if not curves:
    raise ValueError("plot_pass_at_k: no curves given")
  from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
  fig, ax = _figure()
  ks: set[int] = set()
  for name, curve in curves.items():
    points = sorted((int(k), float(v)) for k, v in curve.items())
    ks.update(k for k, _ in points)
    ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=name)
  ax.set_xscale("log", base=2)
  ax.xaxis.set_major_locator(FixedLocator(sorted(ks)))
  ax.xaxis.set_major_formatter(ScalarFormatter())
  ax.xaxis.set_minor_locator(NullLocator())
  ax.set_xlabel("k (samples per problem)")
  ax.set_ylabel("accuracy (pass@k; best-of-n)")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  return _save(fig, out_png)
