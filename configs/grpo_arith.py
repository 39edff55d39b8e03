"""SFT on imperfect demonstrations, then GRPO with the in-graph verifier, on
built-in arithmetic (2-digit addition).

Half of the SFT completions carry a wrong final answer (`data.sft_noise`):
the SFT model proposes right and wrong answers; GRPO (8 samples per prompt,
scored inside the compiled step) re-ranks them toward the verified ones.

    python -m rankjax.launch --config configs/grpo_arith.py --workdir /tmp/grpo
"""

from rankjax.config import (Config, DataCfg, EvalCfg, GRPOCfg, ModelCfg, OptimCfg,
                            SampleCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="grpo_arith", pipeline=("sft", "eval", "grpo", "eval"), log_every=20,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add",), max_digits=2, sft_noise=0.5,
                   batch_size=32, max_length=32, max_prompt_length=16),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=1000),
      sample=SampleCfg(max_new_tokens=6, temperature=1.0),
      grpo=GRPOCfg(steps=100, learning_rate=3e-4, num_prompts=16, group_size=8,
                   rewards=("correct",), scale_rewards="group", aggregation="dapo"),
      eval=EvalCfg(num_problems=200, num_samples=8),
  )
