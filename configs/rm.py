"""A Bradley-Terry reward model on built-in arithmetic preference pairs
(chosen = correct answer, rejected = the answer off by 1..9; see
rankjax/train/_data.py). Exported to <workdir>/export/reward_model.

    python -m rankjax.launch --config configs/rm.py --workdir /tmp/rm
    # your data: {prompt, chosen, rejected[, margin]} JSON Lines
    python -m rankjax.launch --config configs/rm.py --workdir /tmp/rm \
        --config.data.source=jsonl --config.data.path=prefs.jsonl
"""

from rankjax.config import Config, DataCfg, ModelCfg, OptimCfg, RMCfg


def get_config() -> Config:
  return Config(
      name="rm", pipeline=("rm",), log_every=20, eval_every=100,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add",), max_digits=2,
                   batch_size=32, max_length=32),
      optim=OptimCfg(learning_rate=5e-4, warmup_steps=20),
      rm=RMCfg(steps=300, center_coef=0.01),
  )
