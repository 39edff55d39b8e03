import os
import sys

# Helpers shared by tests (hf_reference) live next to this file.
sys.path.insert(0, os.path.dirname(__file__))

# The suite runs tiny programs, so XLA's CPU compiler, not the programs,
# takes most of its time; LLVM at -O0 compiles them about twice as fast.
# Subprocesses inherit the flag (add device-count flags to it, not in its
# place, so both sides of a comparison compile alike).
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
     "--xla_cpu_use_fusion_emitters=false"]).strip()
