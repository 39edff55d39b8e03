"""Supervised fine-tuning of a small model on the built-in arithmetic task.

    python -m rankjax.launch --config configs/sft.py --workdir /tmp/sft
    # your data: prompt/completion (or text/messages) JSON Lines
    python -m rankjax.launch --config configs/sft.py --workdir /tmp/sft \
        --config.data.source=jsonl --config.data.path=train.jsonl
"""

from rankjax.config import Config, DataCfg, ModelCfg, OptimCfg, SFTCfg


def get_config() -> Config:
  return Config(
      name="sft", pipeline=("sft",), log_every=20, eval_every=100,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add", "sub"), max_digits=2,
                   batch_size=32, max_length=32),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=20, schedule="cosine"),
      sft=SFTCfg(steps=600, loss_mask="completion"),
  )
