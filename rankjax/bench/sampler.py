"""Sampler throughput: rankjax against transformers on the same weights.

    python -m rankjax.bench sampler [--modes greedy,top_p,beam] [--repeats 3]
        [--batch 16] [--prompt-len 32] [--new-tokens 128] [--layers 8]
        [--threads N] [--no-transformers] [--tiny] [--json PATH]

A random Llama (vocab 32000, D 512, 8 layers, 8 query / 2 KV heads, F 1408,
float32) is saved with `models.save_pretrained` and loaded by transformers,
so both systems decode the same weights. Every mode runs all `new_tokens`
(no EOS). Beside the two systems the run measures, in the same process:
  * a bare jitted decode step (one `forward_cached` of [B, 1] + argmax, cache
    donated), stepped from Python: the sampler's own ceiling;
  * the machine floor: bytes of weights + live KV cache read per decode step
    over the measured memory bandwidth (and FLOPs over the measured matmul
    peak, for context).
Workloads are timed in alternation (see `_common.time_interleaved`); the
median of the repeats is the steady state, the first call minus it the
compile time.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankjax import models, sampling
from rankjax.bench import _common

MODES = ("greedy", "top_p", "beam")
NUM_BEAMS = 4
TOP_P = 0.9

# (fraction, minimum, what the issue asks for)
TARGETS = (
    ("greedy_vs_transformers", 1.25, "greedy >= 1.25x transformers"),
    ("greedy_vs_bandwidth_floor", 0.80, "greedy >= 80% of the bandwidth floor"),
    ("top_p_vs_transformers", 8.0, "top-p >= 8x transformers"),
    ("top_p_vs_greedy", 0.90, "top-p >= 90% of rankjax greedy"),
    ("beam_vs_transformers", 3.0, "beam 4 >= 3x transformers"),
    ("greedy_vs_bare_step", 0.85, "sampler >= 85% of the bare decode step"),
)


@dataclasses.dataclass(frozen=True)
class Workload:
  batch: int
  prompt_len: int
  new_tokens: int

  @property
  def tokens(self) -> int:
    """Tokens generated per call (for beam: B * N, the returned hypotheses)."""
    return self.batch * self.new_tokens


# The model and workload, and a tiny one for the smoke test.
_SIZES = {
    "full": (dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8,
                  num_heads=8, num_kv_heads=2, head_dim=64),
             Workload(batch=16, prompt_len=32, new_tokens=128)),
    "tiny": (dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16),
             Workload(batch=2, prompt_len=8, new_tokens=8)),
}


# ---------------------------------------------------------------------------
# Setup.
# ---------------------------------------------------------------------------


def parse_args(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m rankjax.bench sampler",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--prompt-len", type=int, default=None)
  p.add_argument("--new-tokens", type=int, default=None)
  p.add_argument("--layers", type=int, default=None)
  p.add_argument("--modes", default=",".join(MODES),
                 help=f"comma-separated subset of {','.join(MODES)}")
  p.add_argument("--no-transformers", action="store_true",
                 help="skip the transformers reference (no torch needed)")
  p.add_argument("--tiny", action="store_true", help="a tiny model and workload (smoke test)")
  p.add_argument("--seed", type=int, default=0)
  _common.add_common_args(p)
  args = p.parse_args(argv)
  args.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
  unknown = set(args.modes) - set(MODES)
  if unknown or not args.modes:
    p.error(f"--modes: unknown {sorted(unknown)}; choose from {','.join(MODES)}")
  return args


def model_config(args) -> models.ModelConfig:
  kw = dict(_SIZES["tiny" if args.tiny else "full"][0])
  kw["num_layers"] = args.layers or kw["num_layers"]
  return models.ModelConfig(**kw, model_type="llama", max_position_embeddings=4096,
                            eos_token_ids=(), pad_token_id=0)


def workload(args) -> Workload:
  base = _SIZES["tiny" if args.tiny else "full"][1]
  return Workload(batch=args.batch or base.batch,
                  prompt_len=args.prompt_len or base.prompt_len,
                  new_tokens=args.new_tokens or base.new_tokens)


def random_model(cfg: models.ModelConfig, seed: int):
  """The model with random weights (std 0.02, norms 1, as `models.create`)
  drawn by numpy: `models.create` draws with jax.random and compiles a
  program per parameter shape, seconds even for the tiny model."""
  graphdef, state = nnx.split(models.create_abstract(cfg))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    if str(path[-1].key).endswith("norm"):
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(0.02 * rng.standard_normal(x.shape, np.float32), x.dtype)

  pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def make_prompts(cfg: models.ModelConfig, w: Workload, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(1, cfg.vocab_size, (w.batch, w.prompt_len), dtype=np.int32)


def load_transformers(model_dir: str, threads: int):
  """The saved checkpoint as a float32 `LlamaForCausalLM` (torch imported here
  so that --no-transformers runs without it)."""
  import torch
  import transformers
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  hf = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  return hf.eval()


# ---------------------------------------------------------------------------
# The workloads: one zero-argument callable per (mode, system).
# ---------------------------------------------------------------------------


def rankjax_runner(mode: str, model, prompts: np.ndarray, w: Workload) -> Callable[[], Any]:
  pair = (prompts, np.ones_like(prompts, bool))
  if mode == "beam":
    return lambda: sampling.beam_search(model, pair, num_beams=NUM_BEAMS,
                                        max_new_tokens=w.new_tokens, eos_token_ids=()).tokens
  cfg = sampling.SamplingConfig(max_new_tokens=w.new_tokens, eos_token_ids=(),
                                temperature=0.0 if mode == "greedy" else 1.0,
                                top_p=TOP_P if mode == "top_p" else 1.0)
  rng = jax.random.key(0)
  return lambda: sampling.generate(model, pair, cfg, rng=rng).tokens


_HF_KWARGS = {
    "greedy": dict(do_sample=False, num_beams=1),
    # top_k=0: transformers' default top_k=50 would filter before top-p.
    "top_p": dict(do_sample=True, temperature=1.0, top_p=TOP_P, top_k=0),
    "beam": dict(do_sample=False, num_beams=NUM_BEAMS, early_stopping=False,
                 length_penalty=1.0),
}


def transformers_runner(mode: str, hf, prompts: np.ndarray, w: Workload) -> Callable[[], Any]:
  import torch
  ids = torch.from_numpy(prompts.astype(np.int64))
  kw = dict(_HF_KWARGS[mode], attention_mask=torch.ones_like(ids), eos_token_id=None,
            pad_token_id=0, max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens)

  def run():
    with torch.inference_mode():
      return hf.generate(ids, **kw)[:, prompts.shape[1]:].numpy()

  return run


def check_full_length(name: str, tokens, w: Workload) -> None:
  """Both systems must generate every one of the new tokens."""
  n = np.asarray(tokens).shape[1]
  if n < w.new_tokens:
    raise RuntimeError(f"{name} returned {n} tokens per row, expected {w.new_tokens}")


def prefix_agreement(a, b) -> float:
  """Mean fraction of each row's tokens before the first disagreement."""
  a, b = np.asarray(a), np.asarray(b)
  n = min(a.shape[1], b.shape[1])
  same = np.cumprod(a[:, :n] == b[:, :n], axis=1)
  return float(same.sum(axis=1).mean() / n)


# ---------------------------------------------------------------------------
# The bare decode step: the sampler's ceiling.
# ---------------------------------------------------------------------------


def _last_logits(model, hidden_btd, head_vd=None):
  return model.logits(hidden_btd[:, -1:], head_vd)[:, 0]


def _argmax(logits_bv):
  # The sampler's own greedy argmax, so the ceiling runs the same ops.
  return sampling.argmax(logits_bv)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def _prefill(graphdef, state, tokens_bp, *, cache_len):
  model = nnx.merge(graphdef, state)
  b, p = tokens_bp.shape
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  cache = model.init_cache(b, cache_len)
  hidden, cache = model.forward_cached(tokens_bp, positions, jnp.ones((b, p), bool), cache)
  logits = _last_logits(model, hidden)
  return _argmax(logits), positions[:, -1] + 1, cache, logits


@functools.partial(jax.jit, static_argnames="graphdef")
def _decode_weights(graphdef, state):
  model = nnx.merge(graphdef, state)
  return model.layer_weights(), model.decode_head()


# The cache is donated so XLA writes the new keys/values in place; the layer
# weights and the LM head come split once, as the sampler makes them before
# its loop.
@functools.partial(jax.jit, static_argnames="graphdef", donate_argnames="cache")
def _decode_step(graphdef, state, weights, head, tokens_b, positions_b, cache):
  model = nnx.merge(graphdef, state)
  ones = jnp.ones((tokens_b.shape[0], 1), bool)
  hidden, cache = model.forward_cached(tokens_b[:, None], positions_b[:, None], ones, cache,
                                       weights)
  return _argmax(_last_logits(model, hidden, head)), positions_b + 1, cache


class BareDecode:
  """Prefill, then `new_tokens` decode steps dispatched from Python; each call
  records its prefill and decode seconds apart (and keeps the prompts'
  next-token logits)."""

  def __init__(self, model, prompts: np.ndarray, w: Workload):
    self.graphdef, self.state = nnx.split(model)
    self.tokens = jnp.asarray(prompts)
    self.w = w
    self.prefill_s: list[float] = []
    self.decode_s: list[float] = []
    self.prompt_logits = None

  def __call__(self):
    t_pre, (tok, pos, cache, self.prompt_logits) = _common.timed(lambda: _prefill(
        self.graphdef, self.state, self.tokens,
        cache_len=self.w.prompt_len + self.w.new_tokens))
    t_dec, out = _common.timed(lambda: self._decode(tok, pos, cache))
    self.prefill_s.append(t_pre)
    self.decode_s.append(t_dec)
    return out

  def _decode(self, tok, pos, cache):
    weights, head = _decode_weights(self.graphdef, self.state)
    for _ in range(self.w.new_tokens):
      tok, pos, cache = _decode_step(self.graphdef, self.state, weights, head, tok, pos, cache)
    return tok

  def summary(self) -> dict[str, float]:
    # Drop the first (compiling) call.
    pre = float(np.median(self.prefill_s[1:] or self.prefill_s))
    dec = float(np.median(self.decode_s[1:] or self.decode_s))
    step = dec / self.w.new_tokens
    return {"step_ms": 1e3 * step, "prefill_ms": 1e3 * pre,
            "tokens_per_s": self.w.batch / step,
            "with_prefill_tokens_per_s": self.w.tokens / (pre + dec)}


# ---------------------------------------------------------------------------
# The machine floor.
# ---------------------------------------------------------------------------


def decode_rows(mode: str, w: Workload) -> int:
  """Rows the model runs per decode step (beam search runs every beam)."""
  return w.batch * (NUM_BEAMS if mode == "beam" else 1)


def decode_cost(cfg: models.ModelConfig, w: Workload, param_bytes: int,
                rows: int) -> dict[str, float]:
  """Bytes and FLOPs of one decode step of `rows` rows.

  Weights: every parameter but the embedding table, of which only the rows'
  embeddings are gathered (all of it when tied: it is then also the LM head).
  KV cache: the live slots, averaged over the decode (prompt + n/2);
  `kv_alloc_mb` is the whole preallocated cache.
  """
  item = jnp.dtype(cfg.dtype).itemsize
  d, v, bsz = cfg.hidden_size, cfg.vocab_size, rows
  embed = 0 if cfg.tie_word_embeddings else v * d * item
  weights = param_bytes - embed + bsz * d * item
  kv_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * item
  live = w.prompt_len + w.new_tokens / 2
  kv = bsz * kv_token * live
  n, k, h, f = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  matmul_params = cfg.num_layers * (d * h * (2 * n + 2 * k) + 3 * d * f) + d * v
  flops = 2 * bsz * matmul_params + 4 * bsz * cfg.num_layers * n * h * live
  return {"weights_mb": weights / 2**20, "kv_live_mb": kv / 2**20,
          "kv_alloc_mb": bsz * kv_token * (w.prompt_len + w.new_tokens) / 2**20,
          "bytes_per_step_mb": (weights + kv) / 2**20, "gflop_per_step": flops / 1e9}


def machine_floor(cost: dict[str, float], machine: dict[str, float],
                  batch: int) -> dict[str, float]:
  """Step time at the measured bandwidth, at the measured matmul peak, and
  the larger of the two (the roofline); tokens/s count `batch` tokens a step
  (beam search returns one hypothesis per prompt)."""
  bw_s = cost["bytes_per_step_mb"] * 2**20 / (machine["bandwidth_gbps"] * 1e9)
  fl_s = cost["gflop_per_step"] / machine["matmul_gflops"]
  roof_s = max(bw_s, fl_s)
  # FLOP per byte of the step against the machine's: above it, the step is
  # compute-bound and the bandwidth floor cannot be reached.
  intensity = cost["gflop_per_step"] * 1e9 / (cost["bytes_per_step_mb"] * 2**20)
  balance = machine["matmul_gflops"] / machine["bandwidth_gbps"]
  return dict(cost, flop_per_byte=intensity, machine_flop_per_byte=balance,
              bandwidth_ms_per_step=1e3 * bw_s, bandwidth_tokens_per_s=batch / bw_s,
              compute_ms_per_step=1e3 * fl_s, compute_tokens_per_s=batch / fl_s,
              roofline_ms_per_step=1e3 * roof_s, roofline_tokens_per_s=batch / roof_s)


def nucleus_sizes(logits_bv, p: float) -> dict[str, float]:
  """How many tokens top-p keeps at the prompts' next position (random
  weights: most of the vocabulary, which a sort-based sampler pays for)."""
  logits = np.asarray(logits_bv, np.float64)
  probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
  probs = -np.sort(-probs / probs.sum(axis=-1, keepdims=True), axis=-1)
  before = np.cumsum(probs, axis=-1) - probs
  sizes = np.sum(before < p, axis=-1)
  return {"median": float(np.median(sizes)), "max": float(sizes.max())}


# ---------------------------------------------------------------------------
# Running the modes.
# ---------------------------------------------------------------------------


def _system_result(t: _common.Timing, w: Workload) -> dict[str, Any]:
  return dict(t.as_dict(), tokens_per_s=w.tokens / t.median_s)


def run_mode(mode, model, hf, prompts, w, repeats, bare=None):
  """Time one mode for both systems (and the bare step, when given) in
  alternation. Returns (results, the tokens each system returned first)."""
  fns = {"rankjax": rankjax_runner(mode, model, prompts, w)}
  if hf is not None:
    fns["transformers"] = transformers_runner(mode, hf, prompts, w)
  if bare is not None:
    fns["bare_step"] = bare
  timings = _common.time_interleaved(fns, repeats, verbose=True)
  timings.pop("bare_step", None)
  for name, t in timings.items():
    check_full_length(f"{name} {mode}", t.first_output, w)
  out = {name: _system_result(t, w) for name, t in timings.items()}
  if hf is not None:
    out["ratio"] = out["rankjax"]["tokens_per_s"] / out["transformers"]["tokens_per_s"]
  out["peak_rss_mb"] = _common.peak_rss_mb()
  return out, {name: np.asarray(t.first_output) for name, t in timings.items()}


def fractions(modes: dict, bare: dict | None, floors: dict) -> dict[str, float]:
  tps = {m: r["rankjax"]["tokens_per_s"] for m, r in modes.items()}
  f = {f"{m}_vs_transformers": r["ratio"] for m, r in modes.items() if "ratio" in r}
  for m, r in modes.items():
    for system, res in r.items():
      if isinstance(res, dict):
        roof = floors[m]["roofline_tokens_per_s"]
        f[f"{system}_{m}_vs_roofline"] = res["tokens_per_s"] / roof
  floor = floors["greedy"]
  if "greedy" in tps:
    f["greedy_vs_bandwidth_floor"] = tps["greedy"] / floor["bandwidth_tokens_per_s"]
    f["greedy_vs_roofline_floor"] = tps["greedy"] / floor["roofline_tokens_per_s"]
    if bare:
      f["greedy_vs_bare_step"] = tps["greedy"] / bare["tokens_per_s"]
      f["greedy_vs_bare_with_prefill"] = tps["greedy"] / bare["with_prefill_tokens_per_s"]
    if "top_p" in tps:
      f["top_p_vs_greedy"] = tps["top_p"] / tps["greedy"]
  if bare:
    f["bare_step_vs_bandwidth_floor"] = bare["tokens_per_s"] / floor["bandwidth_tokens_per_s"]
  return f


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
  m, w = r["machine"], r["workload"]
  parts = [
      f"sampler benchmark: {r['model']['params_m']:.1f}M params, batch {w['batch']}, "
      f"prompt {w['prompt_len']}, {w['new_tokens']} new tokens, "
      f"{m['threads']} threads, bandwidth {m['bandwidth_gbps']:.1f} GB/s, "
      f"matmul {m['matmul_gflops']:.1f} GFLOP/s",
      "", _mode_table(r["modes"]), "", _roofline_table(r), "", _step_table(r), "",
      _target_table(r["targets"])]
  return "\n".join(parts)


def _mode_table(modes: dict) -> str:
  rows = []
  for mode, res in modes.items():
    rj, hf = res["rankjax"], res.get("transformers")
    rows.append([mode, rj["tokens_per_s"], hf["tokens_per_s"] if hf else "-",
                 res.get("ratio", "-"), rj["median_s"], rj["compile_s"],
                 hf["median_s"] if hf else "-", hf["compile_s"] if hf else "-",
                 res["peak_rss_mb"]])
  return _common.format_table(rows, [
      "mode", "rankjax tok/s", "transformers tok/s", "ratio", "rankjax s",
      "rankjax compile s", "transformers s", "transformers 1st-call extra s",
      "peak RSS MB"])


def _roofline_table(r: dict) -> str:
  rows = []
  for mode, res in r["modes"].items():
    fl, f = r["floor_by_mode"][mode], r["fractions"]
    rows.append([mode, fl["compute_ms_per_step"], fl["bandwidth_ms_per_step"],
                 fl["roofline_tokens_per_s"], f[f"rankjax_{mode}_vs_roofline"],
                 f.get(f"transformers_{mode}_vs_roofline", "-")])
  return _common.format_table(rows, [
      "mode", "compute floor ms/step", "bandwidth floor ms/step", "roofline tok/s",
      "rankjax/roofline", "transformers/roofline"])


def _step_table(r: dict) -> str:
  fl, bare = r["floor"], r.get("bare_step") or {}
  rows = [
      ["bandwidth floor (weights+live KV / GB/s)", fl["bandwidth_ms_per_step"],
       fl["bandwidth_tokens_per_s"]],
      ["compute floor (FLOPs / matmul peak)", fl["compute_ms_per_step"],
       fl["compute_tokens_per_s"]],
      ["bare jitted decode step", bare.get("step_ms", "-"), bare.get("tokens_per_s", "-")],
      ["bare prefill + decode steps", "-", bare.get("with_prefill_tokens_per_s", "-")],
  ]
  if "greedy" in r["modes"]:
    g = r["modes"]["greedy"]["rankjax"]["tokens_per_s"]
    rows.append(["rankjax greedy (whole generate)", 1e3 * r["workload"]["batch"] / g, g])
  table = _common.format_table(rows, ["per decode step", "ms/step", "tokens/s"])
  extra = (f"bytes/step: weights {fl['weights_mb']:.1f} MB + live KV {fl['kv_live_mb']:.1f} MB"
           f" (allocated KV {fl['kv_alloc_mb']:.1f} MB); {fl['gflop_per_step']:.2f} GFLOP/step;"
           f" prefill {bare.get('prefill_ms', float('nan')):.1f} ms\n"
           f"intensity {fl['flop_per_byte']:.1f} FLOP/byte vs machine balance"
           f" {fl['machine_flop_per_byte']:.1f}: the step is "
           + ("compute" if fl["flop_per_byte"] > fl["machine_flop_per_byte"] else "bandwidth")
           + "-bound here")
  fr = "  ".join(f"{k}={v:.3f}" for k, v in r["fractions"].items())
  return "\n".join([table, extra, "fractions: " + fr])


def _target_table(targets: dict) -> str:
  rows = [[t["what"], t["measured"], t["target"], "PASS" if t["pass"] else "MISS"]
          for t in targets.values()]
  return _common.format_table(rows, ["target", "measured", "needed", ""])


# ---------------------------------------------------------------------------


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  absent = None if args.no_transformers else _common.missing(("torch", "transformers"), "bench")
  if absent:
    raise SystemExit(f"the transformers comparison needs {absent} (or pass --no-transformers)")
  threads = _common.pin_threads(args.threads)
  cfg, w = model_config(args), workload(args)
  model = random_model(cfg, args.seed)
  prompts = make_prompts(cfg, w, args.seed)
  hf = None
  _common.log(f"model {cfg.num_params / 1e6:.1f}M params; saving and loading it in transformers")
  with tempfile.TemporaryDirectory() as tmp:
    models.save_pretrained(model, tmp)
    if not args.no_transformers:
      hf = load_transformers(tmp, threads["threads"])

  bare = BareDecode(model, prompts, w)
  modes, tokens = {}, {}
  for mode in args.modes:
    _common.log(f"mode {mode}")
    modes[mode], tokens[mode] = run_mode(mode, model, hf, prompts, w, args.repeats,
                                         bare=bare if mode == "greedy" else None)
  if "greedy" not in modes:
    _common.time_call(bare, args.repeats)
  bare_res = bare.summary()

  # After the modes, so that their peak RSS does not include the probe arrays.
  _common.log("probing memory bandwidth and matmul peak")
  bw = _common.memory_bandwidth(16 if args.tiny else 512)
  mm = _common.matmul_peak(256 if args.tiny else 2048)
  machine = dict(threads, bandwidth_gbps=bw["gbps"], matmul_gflops=mm["gflops"],
                 bandwidth=bw, matmul=mm)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  floors = {m: machine_floor(decode_cost(cfg, w, param_bytes, decode_rows(m, w)), machine,
                            w.batch) for m in MODES}

  result = {
      "benchmark": "sampler",
      "model": {"params_m": param_bytes / jnp.dtype(cfg.param_dtype).itemsize / 1e6,
                **{k: getattr(cfg, k) for k in (
                    "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                    "num_heads", "num_kv_heads", "head_dim", "dtype")}},
      "workload": dataclasses.asdict(w) | {"repeats": args.repeats, "num_beams": NUM_BEAMS,
                                           "top_p": TOP_P},
      "machine": machine,
      "modes": modes,
      "bare_step": bare_res,
      "floor": floors["greedy"],
      "floor_by_mode": floors,
      "memory": {"peak_rss_mb": _common.peak_rss_mb(), "device": _common.device_memory()},
  }
  if "top_p" in modes:
    result["top_p_nucleus"] = nucleus_sizes(bare.prompt_logits, TOP_P)
  if "greedy" in modes and hf is not None:
    result["greedy_prefix_agreement"] = prefix_agreement(
        tokens["greedy"]["rankjax"], tokens["greedy"]["transformers"])
  result["fractions"] = fractions(modes, bare_res, floors)
  result["targets"] = _common.check_targets(result["fractions"], TARGETS)
  print(report(result))
  _common.emit_json(result, args.json_path)
  return result


if __name__ == "__main__":
  main()
