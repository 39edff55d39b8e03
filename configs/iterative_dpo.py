"""Iterative DPO on built-in arithmetic: SFT, then 2 iterations of (sample 8
per prompt -> pair a verified-correct with an incorrect completion -> DPO
against the current policy), evaluated before and after.

    python -m rankjax.launch --config configs/iterative_dpo.py --workdir /tmp/idpo
"""

from rankjax.config import (Config, DataCfg, DPOCfg, EvalCfg, ModelCfg, OptimCfg, SampleCfg,
                            SelfImproveCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="iterative_dpo", pipeline=("sft", "eval", "iterative_dpo", "eval"), log_every=50,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add",), max_digits=2, sft_noise=0.5,
                   batch_size=32, max_length=32),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=1000),
      dpo=DPOCfg(beta=0.1),
      sample=SampleCfg(max_new_tokens=6),
      self_improve=SelfImproveCfg(iterations=2, num_prompts=512, num_samples=8,
                                  train_steps=100),
      eval=EvalCfg(num_problems=200, num_samples=8),
  )
