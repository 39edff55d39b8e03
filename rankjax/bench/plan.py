"""TPU and GPU plans without the hardware: compile a real train step ahead
of time for a TPU topology or a set of GPUs and report its per-chip memory.

    python -m rankjax.bench plan --topology v5e:2x2 --model llama3.2-1b --stage sft
        [--stage sft,dpo,grpo] [--topology v5e:2x2,v5e-16,h100-8,...] [--lora-rank 16]
        [--seq 2048] [--batch-per-chip 1] [--prompts 8] [--group 8]
        [--prompt-len 256] [--new-tokens 1024] [--logits-chunk 1024]
        [--remat-policy full] [--mesh fsdp] [--hbm-gib 16] [--tiny] [--json PATH]

TPUs need `libtpu` at the version jax pins (the `plan` extra); GPUs
(`h100-8`, `h200-8`, `a100-8`, or `h100:1x2x8` = slices x hosts x GPUs per
host) need jax's CUDA plugin and ptxas (the `plan-gpu` extra), and are
described to XLA's GPU compiler by their data-sheet figures (`GPUS`); dots
are planned as cuBLAS calls (without a device XLA cannot autotune its
Triton GEMMs). The topology's devices come from
`jax.experimental.topologies.get_topology_desc`, the step is lowered on a
mesh of them from abstract shapes (`train.abstract_train_state`, nothing is
allocated), compiled by that platform's XLA, and
`compiled.memory_analysis()` gives the bytes one chip needs:

  argument_bytes  the step's inputs on one chip: its shard of the state
                  (params, AdamW moments, reference) and of the batch
  temp_bytes      temporaries (activations kept for the backward, logits
                  chunks, KV cache of a rollout, collectives' buffers)
  output_bytes    outputs (the new state; donated, so aliased to the inputs)
  alias_bytes     outputs written in place of donated inputs
  peak_bytes      argument + temp + output − alias: what must fit
  fits            peak_bytes <= the chip's HBM (a GPU's whole memory: jax
                  lets a process take 75% of it unless
                  XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise)

A program that does not fit HBM is refused by libtpu's compiler (which
also counts its reserved memory and code): `fits` is then false, the
temporaries come from the compiler's message and the arguments from the
shards' shapes. Where the arguments alone exceed HBM no program can fit
and none is compiled (`compiled` false, `temp_bytes` null): libtpu can take
longer to refuse such a step than to compile one that fits.

The steps are the real ones (`train.sft_step`, `train.dpo_step`,
`train.grpo_step` with its rollout: prefill, G samples per prompt, N decode
steps, the reward in-graph, the update), with the models' real
architectures (below), bf16 compute, float32 parameters and AdamW moments,
remat and chunked log-probs. The mesh shards parameters and optimizer state
over every chip (`--mesh fsdp`) or splits the chips into fsdp x tensor
(`--mesh fsdp_tensor`: tensor = 4, fsdp = the rest). SFT and DPO take
`--batch-per-chip` sequences of `--seq` tokens per chip (DPO: pairs);
GRPO takes `--prompts` prompts of `--prompt-len` tokens, `--group`
samples each, `--new-tokens` new tokens, the verifier replaced by an EOS
reward (the same shape of work), β = 0 (no reference forward), and
`--minibatches` updates per rollout (`grpo.num_minibatches`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import models, parallel, rewards as rewards_lib, train
from rankjax.bench import _common
from rankjax.config import DPOCfg, GRPOCfg, SampleCfg, SFTCfg

_LLAMA32_ROPE = models.RopeConfig(theta=500000.0, rope_type="llama3", factor=32.0,
                                  low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192)

# The architectures of the published checkpoints (their config.json).
MODELS = {
    "llama3.2-1b": models.ModelConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
        num_heads=32, num_kv_heads=8, head_dim=64, rope=_LLAMA32_ROPE,
        tie_word_embeddings=True, max_position_embeddings=131072),
    "llama3.2-3b": models.ModelConfig(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28,
        num_heads=24, num_kv_heads=8, head_dim=128, rope=_LLAMA32_ROPE,
        tie_word_embeddings=True, max_position_embeddings=131072),
    "llama3.1-8b": models.ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128,
        rope=dataclasses.replace(_LLAMA32_ROPE, factor=8.0), max_position_embeddings=131072),
    "qwen2.5-7b": models.ModelConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
        num_heads=28, num_kv_heads=4, head_dim=128, model_type="qwen2",
        attention_bias=True, rms_norm_eps=1e-6, rope=models.RopeConfig(theta=1000000.0),
        max_position_embeddings=32768),
    # For tests: a tiny model of the same family.
    "tiny": models.ModelConfig(
        vocab_size=2048, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=32, tie_word_embeddings=True),
}

# HBM per chip, GiB (Google Cloud TPU system architecture pages).
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}
# Common slice names -> topology strings for get_topology_desc.
SLICES = {"v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8",
          "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4",
          "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4",
          "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2"}


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  """What XLA's GPU compiler needs to know of a device it cannot see (NVIDIA's
  data sheets; memory as CUDA reports its total)."""
  description: str
  compute_capability: tuple[int, int]
  sm_count: int
  clock_ghz: float
  memory_bytes: int
  bandwidth_bytes_per_s: int
  l2_bytes: int
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int


GPUS = {
    "a100": GpuSpec("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1.41, 81920 * 2**20,
                    2_039_000_000_000, 40 * 2**20, 167936, 166912),
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 81559 * 2**20,
                    3_352_000_000_000, 50 * 2**20, 233472, 232448),
    "h200": GpuSpec("NVIDIA H200", (9, 0), 132, 1.98, 143771 * 2**20,
                    4_800_000_000_000, 50 * 2**20, 233472, 232448),
}


def gpu_target_config(spec: GpuSpec) -> str:
  """The device as an `xla.GpuTargetConfigProto` in text form."""
  major, minor = spec.compute_capability
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024  threads_per_warp: 32
  shared_memory_per_block: 49152  shared_memory_per_core: {spec.shared_memory_per_sm}
  shared_memory_per_block_optin: {spec.shared_memory_per_block_optin}
  threads_per_core_limit: 2048  core_count: {spec.sm_count}  fpus_per_core: 128
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  memory_bandwidth: {spec.bandwidth_bytes_per_s}  l2_cache_size: {spec.l2_bytes}
  clock_rate_ghz: {spec.clock_ghz}  device_memory_size: {spec.memory_bytes}
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: {major} minor: {minor} }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{spec.description}"
"""


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m rankjax.bench plan")
  p.add_argument("--topology", default="v5e:2x2",
                 help="comma-separated topologies (v5e:2x2) or slice names (v5e-4)")
  p.add_argument("--model", default="llama3.2-1b", help=f"comma-separated: {', '.join(MODELS)}")
  p.add_argument("--stage", default="sft", help="comma-separated: sft, dpo, grpo")
  p.add_argument("--lora-rank", type=int, default=0)
  p.add_argument("--seq", type=int, default=2048, help="tokens per sequence (sft, dpo)")
  p.add_argument("--batch-per-chip", type=int, default=1)
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--prompt-len", type=int, default=256)
  p.add_argument("--new-tokens", type=int, default=1024)
  p.add_argument("--minibatches", type=int, default=1,
                 help="grpo.num_minibatches: updates per rollout, each on prompts/minibatches "
                      "prompts' samples (the update's activations shrink with it)")
  p.add_argument("--logits-chunk", type=int, default=1024)
  p.add_argument("--remat-policy", default="full", choices=("full", "dots_saveable", "none"))
  p.add_argument("--mesh", default="fsdp", choices=("fsdp", "fsdp_tensor"))
  p.add_argument("--tiny", action="store_true",
                 help="the tiny model at short lengths (tests): seconds to compile")
  p.add_argument("--hbm-gib", type=float, default=None,
                 help="HBM per chip to plan against (default: the chip's); for GPUs also the "
                      "memory XLA's GPU compiler schedules for")
  p.add_argument("--json", dest="json_path", default=None)
  return p.parse_args(argv)


def chip_of(topology: str) -> str:
  """The chip a topology name starts with: `v5e` of v5e-16, `h100` of h100-8."""
  return re.split(r"[-:]", topology.strip())[0]


def topology_devices(name: str, memory_bytes: int | None = None):
  """(devices, chip) of a TPU topology (from libtpu) or of GPUs (`h100-8`,
  `h200:1x2x8` = slices x hosts x GPUs per host, from jax's CUDA plugin).
  `memory_bytes` replaces a GPU's memory in its description: XLA's GPU
  compiler schedules a program for the memory it is told of."""
  chip = chip_of(name)
  if chip in GPUS:
    spec = GPUS[chip] if memory_bytes is None else dataclasses.replace(
        GPUS[chip], memory_bytes=memory_bytes)
    return _gpu_devices(name, chip, spec), chip
  # Compiling touches no TPU: several planning processes may share libtpu
  # (its lockfile guards real chips).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  topo = SLICES.get(name, name)
  if not re.fullmatch(r"v[0-9a-z]+:\d+(x\d+){1,2}", topo):
    raise SystemExit(f"unknown topology {name!r}: a TPU slice ({', '.join(SLICES)}), a TPU "
                     f"topology such as v5e:4x4, or GPUs such as h100-8 or h100:1x2x8 "
                     f"({', '.join(GPUS)})")
  chip = topo.split(":")[0]
  if chip not in HBM_GIB:
    raise SystemExit(f"no HBM size known for TPU {chip!r} (topology {name!r}): one of "
                     f"{', '.join(HBM_GIB)}")
  dims = [int(d) for d in topo.split(":")[1].split("x")]
  bounds = tuple(min(d, 2) for d in dims) + (1,) * (3 - len(dims))
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo,
                                        chips_per_host_bounds=bounds)
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f"cannot describe TPU topology {topo!r} ({type(e).__name__}: {e}); "
                     "`pip install -e .[plan]` installs the libtpu the installed jax pins") from e
  return desc.devices, chip


def _gpu_devices(name: str, chip: str, spec: GpuSpec):
  """Compile-only CUDA devices: XLA's GPU compiler (jax's CUDA plugin, and a
  CUDA toolkit's ptxas) builds for the described device without one."""
  from jax.experimental import topologies
  if not re.fullmatch(rf"{chip}(-\d+|:\d+x\d+x\d+)", name):
    raise SystemExit(f"unknown GPU topology {name!r}: {chip}-<GPUs> (one host) or "
                     f"{chip}:<slices>x<hosts>x<GPUs per host>")
  shape = name.split(":")[1] if ":" in name else f"1x1x{name.split('-')[1]}"
  try:
    desc = topologies.get_topology_desc(platform="cuda", topology=shape,
                                        target_config=gpu_target_config(spec))
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f"cannot describe GPU topology {name!r} ({type(e).__name__}: {e}); "
                     "`pip install -e .[plan-gpu]` installs jax's CUDA plugin with the CUDA "
                     "libraries (or install jax-cuda13-plugin and jax-cuda13-pjrt beside a "
                     "CUDA 13 toolkit)") from e
  return desc.devices


def hbm_bytes(chip: str) -> int:
  """Memory per chip: a TPU's HBM, a GPU's device memory."""
  return GPUS[chip].memory_bytes if chip in GPUS else HBM_GIB[chip] * 2**30


def model_config(args, name: str) -> models.ModelConfig:
  remat = args.remat_policy != "none"
  return dataclasses.replace(MODELS[name], dtype="bfloat16", param_dtype="float32", remat=remat,
                             remat_policy=args.remat_policy if remat else "full",
                             logits_chunk=args.logits_chunk)


def abstract_model(cfg: models.ModelConfig, lora_rank: int):
  if not lora_rank:
    return models.create_abstract(cfg)
  return nnx.eval_shape(lambda: models.apply_lora(
      models.Transformer(cfg, rngs=nnx.Rngs(params=0)), lora_rank, 2.0 * lora_rank,
      rngs=nnx.Rngs(params=1)))


def _batch_specs(args, stage: str, chips: int, mesh) -> dict[str, Any]:
  split = NamedSharding(mesh, P(("data", "fsdp")))
  # Fewer rows than chips (8 prompts on 16): the prompts are replicated;
  # the step's B·G sampled rows are what the compiler spreads.
  spec = lambda shape, dtype=jnp.int32: jax.ShapeDtypeStruct(
      shape, dtype, sharding=split if shape[0] % chips == 0 else NamedSharding(mesh, P()))
  if stage == "grpo":
    b, pl = args.prompts, args.prompt_len
    return {"prompt_tokens": spec((b, pl)), "prompt_mask": spec((b, pl), jnp.bool_)}
  rows, t = chips * args.batch_per_chip, args.seq
  seq = {"tokens": spec((rows, t)), "loss_mask": spec((rows, t)),
         "segment_ids": spec((rows, t)), "positions": spec((rows, t))}
  if stage == "sft":
    return seq
  return {f"{side}_{k}": v for side in ("chosen", "rejected") for k, v in seq.items()}


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
  """Bytes of one device's shard of an abstract array."""
  return int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize


def step_fn(args, stage: str):
  """(step function, needs a reference) for `stage`, hyper-parameters bound."""
  if stage == "sft":
    return functools.partial(train.sft_step, hp=SFTCfg()), False
  if stage == "dpo":
    return functools.partial(train.dpo_step, hp=DPOCfg()), not args.lora_rank
  if stage == "grpo":
    hp = GRPOCfg(num_prompts=args.prompts, group_size=args.group, num_iterations=1,
                 num_minibatches=args.minibatches)
    settings = train.RolloutSettings(SampleCfg(max_new_tokens=args.new_tokens, temperature=1.0),
                                     eos_ids=(1,), pad_id=0)
    rewards = (rewards_lib.eos_reward(),)
    return (lambda state, batch: train.grpo_step(state, batch, [None], hp=hp, rollout=settings,
                                                 rewards=rewards)), False
  raise SystemExit(f"unknown stage {stage!r}: sft, dpo or grpo")


def plan(args, topology: str, model_name: str, stage: str) -> dict[str, Any]:
  """Compile one step for one topology; its per-chip memory and compile time."""
  memory = int(args.hbm_gib * 2**30) if args.hbm_gib else None
  devices, chip = topology_devices(topology, memory)
  chips = len(devices)
  tensor = 4 if args.mesh == "fsdp_tensor" and chips % 4 == 0 and chips > 4 else 1
  mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": tensor}, devices=devices)
  cfg = model_config(args, model_name)
  fn, reference = step_fn(args, stage)
  tx = optax.adamw(1e-5, weight_decay=0.0)
  state, state_sh = train.abstract_train_state(abstract_model(cfg, args.lora_rank), tx, mesh,
                                               with_reference=reference)
  batch = _batch_specs(args, stage, chips, mesh)
  rep = NamedSharding(mesh, P())
  t0 = time.perf_counter()
  hbm = memory or hbm_bytes(chip)
  # The inputs' shards, from their shapes; the state is donated, so the
  # outputs alias it.
  shard_arg = sum(_shard_bytes(x) for x in jax.tree.leaves((state, batch)))
  shard_alias = shard_arg - sum(_shard_bytes(x) for x in jax.tree.leaves(batch))
  refused, compiled = False, True
  with jax.set_mesh(mesh):
    jitted = jax.jit(fn, out_shardings=(state_sh, rep), donate_argnums=0)
    lowered = jitted.lower(state, batch)
    if shard_arg > hbm:
      # The inputs alone do not fit: no program can, so none is compiled
      # (libtpu may take longer than the whole plan to refuse a large one).
      compiled, temp = False, None
      arg, out, alias = shard_arg, shard_arg, shard_alias
    else:
      try:
        mem = lowered.compile().memory_analysis()
        arg, temp = int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes)
        out, alias = int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes)
      except jax.errors.JaxRuntimeError as e:
        # libtpu refuses programs that exceed HBM; its message says how much
        # temporaries they need: "... HLO temporaries (31.48G) exceeds ..." or
        # "... HLO temp 13.25G (...)".
        need = re.search(r"HLO temp(?:oraries \(| +)([0-9.]+)([KMGT])", str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not need:
          raise
        refused = True
        temp = int(float(need.group(1)) * 2**(10 * "KMGT".index(need.group(2)) + 10))
        arg, out, alias = shard_arg, shard_arg, shard_alias
  seconds = time.perf_counter() - t0
  peak = arg + (temp or 0) + out - alias
  trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return {"topology": SLICES.get(topology, topology), "slice": topology, "chip": chip,
          "chips": chips,
          "model": model_name, "stage": stage, "lora_rank": args.lora_rank,
          "mesh": dict(mesh.shape), "num_params": cfg.num_params, "trainable_params": trainable,
          "argument_bytes": arg, "temp_bytes": temp, "output_bytes": out, "alias_bytes": alias,
          "peak_bytes": peak, "hbm_bytes": hbm, "fits": peak <= hbm and not refused,
          "refused_by_compiler": refused, "compiled": compiled,
          "compile_seconds": seconds}


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(list(argv or []))
  if args.tiny:
    args.model = "tiny"
    args.seq, args.prompt_len, args.new_tokens, args.logits_chunk = 64, 16, 8, 32
    args.prompts, args.group = min(args.prompts, 4), min(args.group, 2)
  if any(chip_of(t) in GPUS for t in args.topology.split(",")):
    # The devices are described, not used: run on the CPU, which also keeps
    # jax's CUDA plugin from requiring a driver and cuDNN at start-up.
    jax.config.update("jax_platforms", "cpu")
    # Without a device XLA cannot autotune, and its Triton GEMM fusions then
    # fail to tile some small dots ("Couldn't find output tile sizes"):
    # plan dots as cuBLAS calls.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_gpu_enable_triton_gemm=false").strip()
  plans = []
  for topology in args.topology.split(","):
    for model_name in args.model.split(","):
      for stage in args.stage.split(","):
        _common.log(f"compiling {stage} of {model_name} for {topology}")
        plans.append(plan(args, topology.strip(), model_name.strip(), stage.strip()))
  gib = lambda b: b / 2**30
  rows = [[p["topology"], p["model"], p["stage"] + (f" lora{p['lora_rank']}" if p["lora_rank"]
                                                     else ""),
           gib(p["argument_bytes"]),
           "-" if p["temp_bytes"] is None else gib(p["temp_bytes"]),
           gib(p["output_bytes"] - p["alias_bytes"]),
           gib(p["peak_bytes"]), gib(p["hbm_bytes"]),
           "yes" if p["fits"] else "NO" if p["compiled"] else "NO (arguments > HBM)",
           p["compile_seconds"]] for p in plans]
  print("per-chip memory of the compiled step (GiB), from compiled.memory_analysis()")
  print(_common.format_table(rows, ["topology", "model", "stage", "arguments", "temporaries",
                                    "outputs", "peak", "HBM", "fits", "compile s"]))
  result = {"benchmark": "plan", "args": vars(args), "plans": plans,
            "jax": jax.__version__}
  _common.emit_json(result, args.json_path)
  return result
