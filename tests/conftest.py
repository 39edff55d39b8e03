import atexit
import os
import shutil
import sys
import tempfile

import pytest

# Helpers shared by tests (hf_reference) live next to this file.
sys.path.insert(0, os.path.dirname(__file__))

# The suite runs tiny programs, so XLA's CPU compiler, not the programs,
# takes most of its time. Two settings halve it, then halve it again:
# - "most optimizations" off (LLVM at -O0), a jax flag read at every compile;
# - XLA's legacy elemental emitters instead of its fusion emitters.
# Subprocesses inherit both through the environment (add device-count flags
# to XLA_FLAGS, not in its place, so both sides of a comparison compile
# alike). A test's own program that runs much longer than it compiles (a
# training loop of hundreds of steps) takes
# `compiler_options={"xla_backend_optimization_level": 2}` in its jit;
# tests whose library programs do use the `optimized_programs` fixture.
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_use_fusion_emitters=false"]).strip()

# Many tests compile the same small programs: the same tiny model's steps in
# several test files, and every `python -m rankjax.launch` subprocess starts
# with a cold in-memory cache. One persistent compilation cache per test run,
# shared by the xdist workers and their subprocesses through the environment,
# compiles each program once per run. The run that creates it removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="rankjax-tests-jit-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

import jax  # noqa: E402  (after the environment it reads)

jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def optimized_programs():
  """XLA's full optimization for the programs this test compiles, for a test
  whose small programs run far longer than they compile (elementwise code
  runs about 4x faster at -O2, for twice the compile time). Not for a real
  model: its matrix products run in library kernels at any LLVM level, and
  the SmolLM2 GRPO test took 198 s with it against 135 s without."""
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", True)
