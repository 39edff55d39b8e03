"""Your own task from files: a JSONL of prompts (TRL columns) and TRL-style
reward functions, SFT -> eval -> GRPO -> eval -> rerank, nothing built in.

The example reverses words (`examples/user_task/`); point the keys below at
your files instead:

    python -m rankjax.launch --config configs/user_task.py \\
        --config.data.path=my_prompts.jsonl --config.data.eval_path=my_eval.jsonl \\
        --config.grpo.rewards=my_rewards.py:exact_match,eos --workdir runs/mine

Rows: `prompt` (text, or chat messages for a checkpoint's chat template),
`completion` (SFT's demonstration) and any reference columns, passed to the
reward functions by name. A sample counts as correct for pass@k when the
first reward function gives at least `eval.pass_threshold`.
"""

from rankjax.config import (Config, DataCfg, EvalCfg, GRPOCfg, ModelCfg, OptimCfg,
                            SampleCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="user_task", pipeline=("sft", "eval", "grpo", "eval", "rerank"), log_every=20,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="jsonl", path="examples/user_task/prompts.jsonl",
                   eval_path="examples/user_task/eval.jsonl", batch_size=32,
                   max_length=32, max_prompt_length=16),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=300),
      sample=SampleCfg(max_new_tokens=8, temperature=1.0),
      grpo=GRPOCfg(steps=50, learning_rate=5e-4, num_prompts=16, group_size=8,
                   rewards=("examples/user_task/rewards.py:exact_match",
                            "examples/user_task/rewards.py:first_letter", "eos")),
      eval=EvalCfg(num_problems=64, num_samples=8),
  )
