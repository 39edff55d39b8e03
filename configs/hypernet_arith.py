"""Text-to-LoRA on the arithmetic family: a hypernetwork turns a task
description into a LoRA adapter of a frozen base, measured zero-shot on
variants it never trained on (docs/algorithms/hypernet.md).

    python -m rankjax.launch --config configs/hypernet_arith.py --workdir /tmp/hypernet

The "hypernet" stage first trains the base from scratch on every variant's
demonstrations (no descriptions: the base knows the arithmetic in both
answer formats, not which one a prompt wants), then the hypernetwork over
the training variants, and prints pass@1 on the held-out variants of the
base, a multi-task LoRA, the hypernetwork's zero-shot adapter and per-task
oracle LoRAs. The learned-embedding ablation: --config.hypernet.embedding=learned
"""

from rankjax.config import (Config, DataCfg, EvalCfg, HypernetCfg, ModelCfg, OptimCfg,
                            SampleCfg)


def get_config() -> Config:
  return Config(
      name="hypernet_arith", pipeline=("hypernet",), log_every=50,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(batch_size=32, max_length=64),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=20),
      sample=SampleCfg(max_new_tokens=48),
      eval=EvalCfg(num_samples=8, temperature=1.0),
      hypernet=HypernetCfg(
          base_steps=1500, embedding="mean_hidden", hidden=128, rank=4, alpha=8.0,
          targets=("q", "k", "v", "o", "gate", "up", "down"), steps=600,
          tasks_per_step=4, rows_per_task=8, learning_rate=2e-3,
          train_variants=("add_bare_1", "add_bare_2", "add_cot_1", "add_cot_2",
                          "sub_bare_1", "sub_bare_2", "sub_cot_1", "mul_bare_2",
                          "mul_cot_1", "mul_cot_2"),
          heldout_variants=("sub_cot_2", "mul_bare_1"),
          num_train=2000, num_eval=100),
  )
