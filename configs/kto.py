"""SFT, then KTO on the built-in arithmetic pairs read unpaired (correct
answer -> desirable, answer off by 1..9 -> undesirable).

    python -m rankjax.launch --config configs/kto.py --workdir /tmp/kto
    # your data: {prompt, completion, label} (or preference) JSON Lines
    python -m rankjax.launch --config configs/kto.py --workdir /tmp/kto \
        --config.pipeline=kto --config.data.source=jsonl --config.data.path=kto.jsonl
"""

from rankjax.config import Config, DataCfg, KTOCfg, ModelCfg, OptimCfg, SFTCfg


def get_config() -> Config:
  return Config(
      name="kto", pipeline=("sft", "kto"), log_every=20, eval_every=100,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add", "sub"), max_digits=2,
                   batch_size=32, max_length=32),
      optim=OptimCfg(learning_rate=1e-3, warmup_steps=20),
      sft=SFTCfg(steps=200),
      kto=KTOCfg(steps=200, beta=0.1),
  )
