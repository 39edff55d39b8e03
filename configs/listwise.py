"""SFT on imperfect demonstrations, then listwise preference optimisation
(Plackett-Luce) on ranked lists of 4 per problem, on built-in arithmetic:
each list ranks the demonstration above three copies whose answer is off by
d in 1..9, near misses above far ones (score 1 - |d| / 10). Evaluated before
and after.

    python -m rankjax.launch --config configs/listwise.py --workdir /tmp/listwise
    # your data: {prompt, completions, scores} JSON Lines (then drop "sft")
    python -m rankjax.launch --config configs/listwise.py --workdir /tmp/listwise \\
        --config.pipeline=listwise --config.data.source=jsonl \\
        --config.data.path=ranked.jsonl --config.listwise.list_size=8
"""

from rankjax.config import (Config, DataCfg, EvalCfg, ListwiseCfg, ModelCfg, OptimCfg,
                            SampleCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="listwise", pipeline=("sft", "eval", "listwise", "eval"), log_every=20,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add",), max_digits=2, sft_noise=0.5,
                   batch_size=32, max_length=32, max_prompt_length=16),
      optim=OptimCfg(learning_rate=1e-3, warmup_steps=20),
      sft=SFTCfg(steps=1000),
      listwise=ListwiseCfg(steps=200, beta=0.1, loss_type=("plackett_luce",), list_size=4),
      sample=SampleCfg(max_new_tokens=6, temperature=1.0),
      eval=EvalCfg(num_problems=200, num_samples=8),
  )
