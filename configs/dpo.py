"""SFT (full), then DPO with LoRA adapters on built-in arithmetic preference
pairs (chosen = correct answer, rejected = the answer off by 1..9); the DPO
reference is the SFT model itself (adapters zeroed).

    python -m rankjax.launch --config configs/dpo.py --workdir /tmp/dpo
    # your data: {prompt, chosen, rejected} JSON Lines (then drop "sft")
    python -m rankjax.launch --config configs/dpo.py --workdir /tmp/dpo \
        --config.pipeline=dpo --config.data.source=jsonl --config.data.path=prefs.jsonl
"""

from rankjax.config import Config, DataCfg, DPOCfg, ModelCfg, OptimCfg, SFTCfg


def get_config() -> Config:
  return Config(
      name="dpo", pipeline=("sft", "dpo"), log_every=20, eval_every=100,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384, lora_rank=8, lora_alpha=16.0,
                     lora_stages=("dpo",)),
      data=DataCfg(source="arithmetic", ops=("add", "sub"), max_digits=2,
                   batch_size=32, max_length=32),
      optim=OptimCfg(learning_rate=1e-3, warmup_steps=20),
      sft=SFTCfg(steps=200),
      dpo=DPOCfg(steps=200, beta=0.1, loss_type=("sigmoid",)),
  )
