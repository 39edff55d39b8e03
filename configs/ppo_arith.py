"""SFT on imperfect demonstrations, then PPO (shared-trunk value head, GAE,
k1 KL penalty to the SFT model) with the in-graph verifier as the reward.

    python -m rankjax.launch --config configs/ppo_arith.py --workdir /tmp/ppo
"""

from rankjax.config import (Config, DataCfg, EvalCfg, ModelCfg, OptimCfg, PPOCfg,
                            SampleCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="ppo_arith", pipeline=("sft", "eval", "ppo", "eval"), log_every=20,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add",), max_digits=2, sft_noise=0.5,
                   batch_size=32, max_length=32, max_prompt_length=16),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=1000),
      sample=SampleCfg(max_new_tokens=6, temperature=1.0),
      ppo=PPOCfg(steps=100, learning_rate=3e-4, num_prompts=64, num_epochs=2,
                 num_minibatches=2, kl_coef=0.02, vf_coef=0.1, shared_critic=True),
      eval=EvalCfg(num_problems=200, num_samples=8),
  )
