"""Stage ends on a mesh never deadlock: 48 rounds of last step, evaluation,
async checkpoint, wait, LoRA merge, export and sampling on 8 fake CPU
devices (data 2, fsdp 2, tensor 2), in one process. Independent collective
programs dispatched back to back (a finiteness check per leaf, one eval
program per batch, one sharded matmul per adapter) used to abort this in
about half the processes; see `rankjax.parallel` for the rule that keeps it
from happening. Runs in a subprocess: the device count is fixed when jax
starts."""

import os

from multidevice import run_on_8_devices


def test_stage_ends_on_8_devices_complete():
  result = run_on_8_devices(os.path.join(os.path.dirname(__file__), "stage_end_check.py"),
                            timeout=600)
  assert result["rounds"] == 48
  assert result["finite"]
