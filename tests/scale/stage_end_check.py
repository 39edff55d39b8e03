"""Run by test_stage_end.py in a subprocess with 8 fake CPU devices: many
short stage ends in one process on a (data 2, fsdp 2, tensor 2) mesh, each
the sequence a training stage ends with: the last step, an evaluation over
several batches, the final asynchronous checkpoint (with its finiteness
check), waiting for it, merging LoRA adapters, the HF export, then sampling.

Before `parallel`'s dispatch rule was kept, this aborted within a few
rounds in about half the processes (a collective waiting for partners that
never arrived). Prints one JSON line."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import faulthandler  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
from rankjax import checkpoint, models, parallel, sampling, testing, train  # noqa: E402
from rankjax.config import CheckpointCfg, OptimCfg  # noqa: E402
from train_helpers import lm_batch  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 48


def main():
  assert jax.device_count() == 8, jax.device_count()
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = models.apply_lora(testing.tiny_model("llama", seed=0), 4, 8.0,
                            ("q", "v", "up"), rngs=nnx.Rngs(params=1))
  tx = train.make_optimizer(OptimCfg(learning_rate=1e-3, warmup_steps=0), 1000)
  state, state_sh = train.create_train_state(model, tx, mesh)
  batch_sh = train.batch_sharding(mesh)
  step = train.jit_step(train.sft_step, state_sh, batch_sh)
  eval_step = train.jit_eval(train.eval_step, state_sh, batch_sh, objective=train.sft_objective)
  batches = [lm_batch(b=8, seed=s) for s in range(4)]
  scfg = sampling.SamplingConfig(max_new_tokens=4, temperature=0.0, eos_token_ids=(1,))
  workdir = tempfile.mkdtemp()
  start = time.time()
  losses = []
  for r in range(ROUNDS):
    # A stuck round shows where the host was (XLA aborts 40 s in).
    faulthandler.dump_traceback_later(30)
    ckpt = checkpoint.Manager(f"{workdir}/ckpt{r}", CheckpointCfg(async_save=True))
    state, metrics = step(state, train.put_batch(batches[r % 4], batch_sh))
    losses.append(train.evaluate_batches(eval_step, state, iter(batches), batch_sh)["loss"])
    assert ckpt.save(r + 1, state, {"position": r}, metrics={"loss": losses[-1]})
    ckpt.wait()
    merged = models.merge_lora(state.model())
    models.save_pretrained(merged, f"{workdir}/export")
    out = sampling.generate(merged, [[3, 4, 5], [6, 7]], scfg)
    assert out.tokens.shape[0] == 2
    faulthandler.cancel_dump_traceback_later()
  print(json.dumps({"rounds": ROUNDS, "seconds": round(time.time() - start, 1),
                    "finite": bool(np.all(np.isfinite(losses)))}))


if __name__ == "__main__":
  main()
