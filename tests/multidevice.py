"""Subprocess environments with a chosen number of fake CPU devices (the
device count is fixed when jax starts), and a check script run on 8 of
them."""

import json
import os
import subprocess
import sys


_COUNT = "--xla_force_host_platform_device_count"


def cpu_env(devices: int = 1) -> dict:
  """os.environ for a CPU-only subprocess with `devices` devices; the
  suite's compile settings (conftest.py) stay."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_COUNT)]
  if devices > 1:
    flags.append(f"{_COUNT}={devices}")
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))


def run_on_8_devices(script: str, timeout: int = 900) -> dict:
  env = cpu_env(8)
  proc = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
