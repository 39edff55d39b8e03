"""Checkpoint manager: round trip, keep-last-K + best, refusing NaN, fallback."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import checkpoint
from rankjax.config import CheckpointCfg


def _state(scale):
  return {"params": {"w": jnp.full((3, 4), float(scale))}, "step": jnp.int32(scale),
          "rng": jax.random.key(7)}


def test_round_trip_with_data_state_and_rng(tmp_path):
  mgr = checkpoint.Manager(tmp_path, CheckpointCfg(keep=3))
  assert mgr.save(5, _state(5), data_state={"position": 17}, metrics={"loss": 1.0})
  assert mgr.save(6, _state(6), data_state=b"\x00grain-bytes")
  mgr.close()
  again = checkpoint.Manager(tmp_path, CheckpointCfg(keep=3))
  state, data, step = again.restore_or(_state(0))
  assert step == 6 and data == b"\x00grain-bytes"
  np.testing.assert_array_equal(state["params"]["w"], 6.0)
  np.testing.assert_array_equal(jax.random.key_data(state["rng"]),
                                jax.random.key_data(jax.random.key(7)))


def test_fresh_directory_returns_given_state(tmp_path):
  mgr = checkpoint.Manager(tmp_path / "none")
  state, data, step = mgr.restore_or(_state(1), {"position": 0})
  assert step == 0 and data == {"position": 0}


def test_keep_last_k_plus_best(tmp_path):
  cfg = CheckpointCfg(keep=2, best_metric="loss", best_mode="min")
  mgr = checkpoint.Manager(tmp_path, cfg)
  for step, loss in [(1, 5.0), (2, 0.5), (3, 4.0), (4, 3.0), (5, 2.0)]:
    mgr.save(step, _state(step), metrics={"loss": loss})
  mgr.wait()
  assert mgr.steps == [2, 4, 5]
  assert mgr.best_step() == 2
  mgr.close()


def test_nonfinite_state_is_never_written(tmp_path):
  mgr = checkpoint.Manager(tmp_path)
  mgr.save(1, _state(1))
  bad = _state(2)
  bad["params"]["w"] = bad["params"]["w"].at[0, 0].set(jnp.nan)
  assert not mgr.save(2, bad)
  mgr.wait()
  assert mgr.steps == [1] and mgr.refused == 1


def test_corrupted_latest_falls_back_to_previous(tmp_path, caplog):
  mgr = checkpoint.Manager(tmp_path, CheckpointCfg(keep=3))
  mgr.save(1, _state(1))
  mgr.save(2, _state(2))
  mgr.close()
  for root, _, files in os.walk(tmp_path / "2"):
    for f in files:
      if "state" in root:
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"corrupted")
  state, _, step = checkpoint.Manager(tmp_path).restore_or(_state(0))
  assert step == 1
  np.testing.assert_array_equal(state["params"]["w"], 1.0)
  assert "falling back" in caplog.text


def test_preemption_guard_turns_sigterm_into_a_flag():
  with checkpoint.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested
