"""Survive being killed, and run as several processes.

Each run is a real `python -m rankjax.launch` subprocess on a tiny SFT
recipe, so this exercises the CLI, the data iterator state, the orbax
checkpoints and the multi-process path end to end.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file

from multidevice import cpu_env

TINY = ["--config", "configs/sft.py", "--config.sft.steps=12", "--config.log_every=1",
        "--config.eval_every=0", "--config.model.hidden_size=32", "--config.model.num_layers=2",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.data.batch_size=8", "--config.data.num_train=400",
        "--config.data.num_eval=16", "--config.checkpoint.async_save=false"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launch(workdir, *extra, env=None, wait=True):
  cmd = [sys.executable, "-m", "rankjax.launch", *TINY, "--workdir", str(workdir), *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  return out


def _losses(workdir):
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  return {r["step"]: r["loss"] for r in rows if r.get("stage") == "sft" and "loss" in r}


def _weights(workdir):
  return load_file(workdir / "export" / "model.safetensors")


def test_sigkill_and_restart_matches_uninterrupted_run(tmp_path):
  straight = tmp_path / "straight"
  _launch(straight, "--config.checkpoint.every=3")
  killed = tmp_path / "killed"
  proc = _launch(killed, "--config.checkpoint.every=3", wait=False)
  ckpt = killed / "checkpoints" / "sft"
  deadline = time.time() + 300
  # Orbax writes into a temporary directory and renames it to the step
  # number once complete: a digit-named directory is a committed checkpoint.
  while time.time() < deadline:
    if ckpt.exists() and any(d.name.isdigit() and int(d.name) >= 6 for d in ckpt.iterdir()):
      break
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_before = sorted(_losses(killed))
  assert steps_before and max(steps_before) < 12, "the run finished before it was killed"
  out = _launch(killed, "--config.checkpoint.every=3")
  assert "resumed from step" in out
  a, b = _weights(straight), _weights(killed)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  la, lb = _losses(straight), _losses(killed)
  for step in range(1, 13):
    assert la[step] == lb[step], (step, la[step], lb[step])


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
  proc = _launch(tmp_path, "--config.sft.steps=100000", "--config.checkpoint.every=0", wait=False)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  steps = [d for d in (tmp_path / "checkpoints" / "sft").iterdir() if d.name.isdigit()]
  assert steps, out[-2000:]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  one = tmp_path / "one"
  _launch(one, "--config.sft.steps=5", env={"XLA_FLAGS": cpu_env(2)["XLA_FLAGS"]})
  two = tmp_path / "two"
  port = _free_port()
  procs = [_launch(two, "--config.sft.steps=5", "--coordinator", f"localhost:{port}",
                   "--num_processes", "2", "--process_id", str(i), wait=False)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  la, lb = _losses(one), _losses(two)
  assert sorted(la) == sorted(lb) == [1, 2, 3, 4, 5]
  for step in la:
    assert abs(la[step] - lb[step]) <= 1e-5 * abs(la[step]), (step, la[step], lb[step])
