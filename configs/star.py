"""STaR / ReST-EM on built-in arithmetic: SFT on imperfect demonstrations,
then 2 iterations of (sample 8 per prompt -> keep the verified-correct ->
SFT from the base on them), evaluated before and after.

    python -m rankjax.launch --config configs/star.py --workdir /tmp/star
"""

from rankjax.config import (Config, DataCfg, EvalCfg, ModelCfg, OptimCfg, SampleCfg,
                            SelfImproveCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="star", pipeline=("sft", "eval", "star", "eval"), log_every=50,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add",), max_digits=2, sft_noise=0.5,
                   batch_size=32, max_length=32),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=1000),
      sample=SampleCfg(max_new_tokens=6),
      self_improve=SelfImproveCfg(iterations=2, num_prompts=512, num_samples=8,
                                  train_steps=300, restart_from_base=False),
      eval=EvalCfg(num_problems=200, num_samples=8),
  )
