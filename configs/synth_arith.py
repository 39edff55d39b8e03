"""Verified synthetic data on built-in arithmetic: from 128 seed problems
(add/sub, operands of 1-3 digits), the model proposes new problems, each
with the expression that solves it; the expression is carried out, the
verifier keeps the records whose result is the problem's answer, the pool
grows for three rounds, and SFT continues on the grown pool. The two evals
compare SFT on the seeds alone ("sft") with SFT on seeds + synthesized
problems ("sft_2") on the same held-out problems.

    python -m rankjax.launch --config configs/synth_arith.py --workdir /tmp/synth
    # the same SFT budget on the seeds alone (the baseline at equal steps):
    python -m rankjax.launch --config configs/synth_arith.py --workdir /tmp/seeds \\
        --config.pipeline=sft,eval --config.sft.steps=2000

The synthesized rows, with their provenance, are in
/tmp/synth/synth/synthesize/data.jsonl.
"""

from rankjax.config import (Config, DataCfg, EvalCfg, ModelCfg, OptimCfg, SampleCfg,
                            SFTCfg, SynthCfg)


def get_config() -> Config:
  return Config(
      name="synth_arith", pipeline=("sft", "eval", "synthesize", "sft", "eval"),
      log_every=100,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add", "sub"), min_digits=1, max_digits=3,
                   num_train=128, num_eval=200, batch_size=32, max_length=32,
                   max_prompt_length=16),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=1000),
      sample=SampleCfg(max_new_tokens=6),
      synth=SynthCfg(method="verified", rounds=3, proposals=1024, shots=4,
                     proposer_steps=300, max_new_tokens=24, temperature=0.8,
                     rouge_tokens="chars", novelty=0.9, pattern=r"[0-9]+[-+*][0-9]+="),
      eval=EvalCfg(num_problems=200, num_samples=4),
  )
