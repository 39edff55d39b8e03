"""Helpers shared by the benchmarks: threads, timing, memory, machine probes,
and the report (a table for people, one JSON line for machines).

Thread pinning. jax 0.10 has no XLA flag for the CPU thread count:
`intra_op_parallelism_threads` is a TensorFlow session option (XLA_FLAGS
rejects `--intra_op_parallelism_threads` as an unknown flag and silently
ignores the dash-less spelling). The PJRT CPU client sizes its intra-op pool
from the process's CPU affinity when the backend starts, so `pin_threads`
restricts the affinity to n CPUs (and sets torch's pool to n); with n == 1 it
also adds `--xla_cpu_multi_thread_eigen=false`. Call it before the first jax
computation and before torch starts its pool: `python -m rankjax.bench` does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_START = time.perf_counter()


def log(message: str) -> None:
  """Progress on stderr (stdout carries the table and the JSON line)."""
  print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Threads.
# ---------------------------------------------------------------------------


def available_cpus() -> int:
  return len(os.sched_getaffinity(0))


def pin_threads(n: int | None) -> dict[str, Any]:
  """Limit XLA (through CPU affinity) and torch to n threads; None = all."""
  cpus = sorted(os.sched_getaffinity(0))
  n = len(cpus) if n is None else max(1, min(int(n), len(cpus)))
  if n < len(cpus):
    os.sched_setaffinity(0, cpus[:n])
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(n)
  if n == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false").strip()
  if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(n)
  return thread_report(n)


def thread_report(n: int) -> dict[str, Any]:
  return {"threads": n, "cpu_affinity": available_cpus(), "cpu_count": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
  """Wall-clock seconds of one workload: the first call, then the repeats.

  `cpu_times_s` is the process CPU time (all threads) of each repeat: on a
  shared machine, wall >> cpu / threads means the run waited for a core.
  """
  first_s: float
  times_s: list[float]
  cpu_times_s: list[float] = dataclasses.field(default_factory=list)
  # What the first call returned (for checking the work done), not timed.
  first_output: Any = dataclasses.field(default=None, repr=False)

  @property
  def best_s(self) -> float:
    return min(self.times_s)

  @property
  def median_s(self) -> float:
    return statistics.median(self.times_s)

  @property
  def compile_s(self) -> float:
    """First call minus steady state: compilation and one-off setup."""
    return max(0.0, self.first_s - self.median_s)

  def as_dict(self) -> dict[str, float]:
    return {"first_s": self.first_s, "median_s": self.median_s, "best_s": self.best_s,
            "compile_s": self.compile_s, "times_s": list(self.times_s),
            "cpu_median_s": statistics.median(self.cpu_times_s or [0.0])}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """Seconds for fn(), waiting for any jax arrays it returns."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t0, out


def time_interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int, *,
                     verbose: bool = False) -> dict[str, Timing]:
  """Time several workloads in alternation, so that load from other
  processes on a shared machine hits them alike; the first call of each is
  recorded apart (it compiles). `verbose` logs progress to stderr."""
  say = log if verbose else (lambda _: None)
  firsts = {}
  for name, fn in fns.items():
    say(f"first call: {name}")
    firsts[name] = timed(fn)
  times: dict[str, list[float]] = {name: [] for name in fns}
  cpu: dict[str, list[float]] = {name: [] for name in fns}
  for r in range(max(1, repeats)):
    say(f"repeat {r + 1}/{max(1, repeats)}: {', '.join(fns)}")
    for name, fn in fns.items():
      c0 = time.process_time()
      times[name].append(timed(fn)[0])
      cpu[name].append(time.process_time() - c0)
  return {name: Timing(firsts[name][0], times[name], cpu[name], firsts[name][1])
          for name in fns}


def time_call(fn: Callable[[], Any], repeats: int) -> Timing:
  return time_interleaved({"_": fn}, repeats)["_"]


# ---------------------------------------------------------------------------
# Memory.
# ---------------------------------------------------------------------------


def peak_rss_mb() -> float:
  """Peak resident set of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_memory() -> dict[str, float] | None:
  """Peak/current bytes on the default jax device, where the backend has
  memory stats (GPU/TPU; the CPU backend has none)."""
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
  return {k.replace("bytes", "mb"): stats[k] / 2**20 for k in keys if k in stats}


# ---------------------------------------------------------------------------
# Machine probes, measured in the same run as the benchmark.
# ---------------------------------------------------------------------------


def memory_bandwidth(size_mb: int = 512, repeats: int = 5) -> dict[str, float]:
  """Main-memory bandwidth in GB/s over arrays far larger than any cache.

  numpy copy counts read + write bytes (STREAM's convention); the jitted
  jax sum reads only. `gbps` is the best of the two: the floor it implies is
  the most demanding one.
  """
  n = size_mb * 2**20 // 4
  src = np.random.default_rng(0).random(n, dtype=np.float32)
  dst = np.empty_like(src)
  copy = time_call(lambda: np.copyto(dst, src), repeats)
  x = jnp.asarray(src)
  total = jax.jit(jnp.sum)
  read = time_call(lambda: total(x), repeats)
  del x
  copy_gbps = 2 * src.nbytes / copy.best_s / 1e9
  read_gbps = src.nbytes / read.best_s / 1e9
  return {"numpy_copy_gbps": copy_gbps, "jax_read_gbps": read_gbps,
          "gbps": max(copy_gbps, read_gbps), "probe_mb": float(size_mb)}


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """float32 FLOP/s of one jitted [n, n] @ [n, n] matmul (best of repeats)."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), jnp.float32)
  b = jax.random.normal(keys[1], (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  t = time_call(lambda: matmul(a, b), repeats)
  return {"gflops": 2 * n**3 / t.best_s / 1e9, "size": float(n)}


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def fmt(value: Any) -> str:
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, float):
    if value == 0 or 0.01 <= abs(value) < 1e6:
      return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:.3g}"
  return str(value)


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
  """Rows of cells as aligned text under a header; first column left-aligned."""
  cells = [list(header)] + [[fmt(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(header))]

  def line(r):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths))).rstrip()

  rule = ["-" * w for w in widths]
  return "\n".join([line(cells[0]), line(rule)] + [line(r) for r in cells[1:]])


def emit_json(result: Mapping[str, Any], path: str | None = None) -> str:
  """One JSON line on stdout (and in `path` when given)."""
  text = json.dumps(result, sort_keys=True, default=float)
  print(text)
  if path:
    with open(path, "w") as f:
      f.write(text + "\n")
  return text


def add_common_args(parser) -> None:
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed repeats after the first call (median is reported)")
  parser.add_argument("--threads", type=int, default=None,
                      help="threads for XLA and torch (default: os.cpu_count())")
  parser.add_argument("--json", dest="json_path", default=None,
                      help="also write the JSON result to this path")


def check_targets(fractions: Mapping[str, float],
                  targets: Sequence[tuple[str, float, str]]) -> dict[str, dict[str, Any]]:
  """{key: measured, target, what, pass} for each (key, minimum, what) in
  `targets` whose fraction was measured."""
  return {key: {"measured": fractions[key], "target": minimum, "what": what,
                "pass": bool(fractions[key] >= minimum)}
          for key, minimum, what in targets if key in fractions}


def missing(modules: Sequence[str], extra: str) -> str | None:
  """None when every module is importable, else which are missing and the
  extra that installs them (the comparisons' dependencies are optional)."""
  absent = [m for m in modules if importlib.util.find_spec(m) is None]
  if not absent:
    return None
  return f"{', '.join(absent)} not installed: pip install -e '.[{extra}]'"
