"""Run a check script with 8 fake CPU devices in a subprocess (the device
count is fixed when jax starts) and return the JSON of its last line."""

import json
import os
import subprocess
import sys


def run_on_8_devices(script: str, timeout: int = 900) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]))
  proc = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
