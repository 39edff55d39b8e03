"""`python -m rankjax.bench plan`: a tiny model's train steps compiled ahead
of time for a TPU v5e 2x2 slice (through libtpu) and for 8 H100 GPUs
(through jax's CUDA plugin), on this CPU machine.

Neither compiler is a test dependency (installed beside jax, each makes
every jax start-up look for its devices): the tests install the versions
jax pins into a cache directory with pip and put it on the subprocess's
path. They skip, with the reason, only where pip cannot install them (no
package index) or, for the GPU, where no CUDA toolkit's ptxas is found."""

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from rankjax import models, parallel, train
from rankjax.bench import plan as plan_lib


def _libtpu_requirement() -> str:
  """`libtpu==<jax's pin>` from jax's own metadata (its `tpu` extra)."""
  pins = [req.split(";")[0].strip() for req in importlib.metadata.requires("jax") or ()
          if req.startswith("libtpu")]
  assert pins, "jax declares no libtpu pin: `bench plan` cannot know which libtpu it needs"
  return pins[0]


def _pip_into_cache(env_var: str, name: str, requirements: list[str], installed: str) -> str:
  """A directory ($env_var, or ~/.cache/rankjax/<name>) holding
  `requirements`, installed by pip unless its `installed` entry exists;
  skips with pip's error where pip fails."""
  target = Path(os.environ.get(env_var, Path.home() / ".cache" / "rankjax" / name))
  if not (target / installed).exists():
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(target), *requirements], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode:
      pytest.skip(f"{' '.join(requirements)} cannot be installed here: {proc.stderr[-400:]}")
  return str(target)


@pytest.fixture(scope="module")
def libtpu_path():
  if importlib.util.find_spec("libtpu") is not None:
    return ""
  req = _libtpu_requirement()
  version = re.sub(r"[^0-9.]", "", req.split("==")[-1]).strip(".")
  return _pip_into_cache("RANKJAX_LIBTPU_DIR", f"libtpu-{version}", [req], "libtpu")


@pytest.fixture(scope="module")
def cuda_plugin_path():
  if not (shutil.which("ptxas") or Path("/usr/local/cuda/bin/ptxas").exists()):
    pytest.skip("compiling for a GPU without one needs a CUDA toolkit's ptxas (none on PATH or "
                "in /usr/local/cuda); `pip install -e .[plan-gpu]` brings one")
  v = jax.__version__
  return _pip_into_cache("RANKJAX_CUDA_PLUGIN_DIR", f"jax-cuda13-{v}",
                         [f"jax-cuda13-plugin=={v}", f"jax-cuda13-pjrt=={v}"],
                         "jax_plugins/xla_cuda13")


def _plan(compiler_path, path, *args, topology="v5e:2x2"):
  """(stdout, plans) of `bench plan --tiny --topology <topology> *args`."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (compiler_path, env.get("PYTHONPATH")) if p)
  cmd = [sys.executable, "-m", "rankjax.bench", "plan", "--tiny", "--topology", topology,
         *args, "--json", str(path)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout, json.loads(path.read_text())["plans"]


@pytest.fixture(scope="module")
def plans(libtpu_path, tmp_path_factory):
  return _plan(libtpu_path, tmp_path_factory.mktemp("plan") / "plan.json", "--stage", "sft,grpo")


def _assert_compiled_and_fits(p, *, chips: int, hbm_bytes: int):
  """A plan compiled on an all-fsdp mesh of `chips`, fitting `hbm_bytes`."""
  assert p["chips"] == chips and p["compiled"] is True
  assert p["mesh"] == {"data": 1, "fsdp": chips, "tensor": 1}
  assert p["hbm_bytes"] == hbm_bytes and p["fits"] is True
  assert p["peak_bytes"] == (p["argument_bytes"] + p["temp_bytes"] + p["output_bytes"]
                             - p["alias_bytes"])
  # One chip holds about 1/chips of the float32 parameters and both AdamW
  # moments (embeddings and norms shard unevenly or not at all).
  state_bytes = 3 * 4 * p["num_params"]
  assert state_bytes / chips <= p["argument_bytes"] < 2 * state_bytes / chips, p
  # The state is donated: the new one is written in place of the old.
  assert p["alias_bytes"] > 0.9 * state_bytes / chips


def test_steps_compile_for_v5e_2x2_and_fit(plans):
  stdout, result = plans
  assert [p["stage"] for p in result] == ["sft", "grpo"]
  for p in result:
    assert p["topology"] == "v5e:2x2"
    _assert_compiled_and_fits(p, chips=4, hbm_bytes=16 * 2**30)
    assert p["compile_seconds"] > 0
  assert "per-chip memory" in stdout and "v5e:2x2" in stdout


def test_a_step_whose_arguments_exceed_hbm_is_not_compiled(libtpu_path, plans, tmp_path):
  # A chip of 64 KiB: the tiny model's state shard alone is larger.
  stdout, (p,) = _plan(libtpu_path, tmp_path / "plan.json", "--stage", "sft",
                       "--hbm-gib", str(2**-14))
  assert p["hbm_bytes"] == 2**16
  assert p["compiled"] is False and p["fits"] is False and p["refused_by_compiler"] is False
  assert p["temp_bytes"] is None
  # The arguments come from the shards' shapes: about a quarter of the state,
  # at most what the compiled SFT step reports (which adds the TPU's layout
  # padding, large for the tiny model's small arrays; for Llama-3.2-1B on
  # v5e-4 both give 3.45 GiB).
  (compiled_sft,) = [q for q in plans[1] if q["stage"] == "sft"]
  assert compiled_sft["compiled"] is True
  state_bytes = 3 * 4 * p["num_params"]
  assert state_bytes / 4 <= p["argument_bytes"] < state_bytes / 2, p
  assert p["argument_bytes"] <= compiled_sft["argument_bytes"]
  assert p["peak_bytes"] == p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"]
  assert p["peak_bytes"] > p["hbm_bytes"]
  assert "NO (arguments > HBM)" in stdout


def test_steps_compile_for_8_h100s_and_fit(cuda_plugin_path, tmp_path):
  stdout, result = _plan(cuda_plugin_path, tmp_path / "plan.json", "--stage", "sft,grpo",
                         topology="h100-8")
  assert [p["stage"] for p in result] == ["sft", "grpo"]
  for p in result:
    assert p["chip"] == "h100"
    _assert_compiled_and_fits(p, chips=8, hbm_bytes=plan_lib.GPUS["h100"].memory_bytes)
    assert p["temp_bytes"] > 0
  assert "h100-8" in stdout


def test_gpu_description_carries_the_memory_to_plan_for():
  spec = plan_lib.GPUS["h100"]
  assert f"device_memory_size: {spec.memory_bytes}" in plan_lib.gpu_target_config(spec)
  smaller = plan_lib.gpu_target_config(dataclasses.replace(spec, memory_bytes=16 * 2**30))
  assert f"device_memory_size: {16 * 2**30}" in smaller
  assert "cuda_compute_capability { major: 9 minor: 0 }" in smaller and "core_count: 132" in smaller


@pytest.mark.parametrize("name, message", [
    ("b200-8", "unknown topology 'b200-8': a TPU slice (v5e-4,"),
    ("v5e-3", "unknown topology 'v5e-3'"),
    ("h100-x", "unknown GPU topology 'h100-x': h100-<GPUs>"),
    ("v3:2x2", "no HBM size known for TPU 'v3' (topology 'v3:2x2'): one of v4,"),
])
def test_unknown_topologies_are_named(name, message):
  with pytest.raises(SystemExit, match=re.escape(message)):
    plan_lib.topology_devices(name)


def test_abstract_train_state_matches_the_real_one():
  cfg = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                           num_heads=2, num_kv_heads=1, head_dim=16)
  mesh = parallel.make_mesh({"data": -1})
  tx = optax.adamw(1e-3)
  real, real_sh = train.create_train_state(models.create(cfg), tx, mesh, with_reference=True)
  abstract, abstract_sh = train.abstract_train_state(models.create_abstract(cfg), tx, mesh,
                                                     with_reference=True)
  assert jax.tree.structure(real) == jax.tree.structure(abstract)
  for r, a in zip(jax.tree.leaves(real), jax.tree.leaves(abstract)):
    assert isinstance(a, jax.ShapeDtypeStruct)
    assert (a.shape, a.dtype) == (np.shape(r), r.dtype)
    assert a.sharding == r.sharding
  assert jax.tree.leaves(real_sh) == jax.tree.leaves(abstract_sh)
