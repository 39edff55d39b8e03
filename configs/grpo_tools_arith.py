"""GRPO with a calculator tool on 4-to-6-digit addition: multi-turn rollouts
inside the compiled step.

SFT sees short worked answers ("a+b = c" then "answer: c") and, for 60% of
the problems, a tool call instead: "<calc>a+b</calc>", the calculator's
result, then the answer line. GRPO then samples with the calculator in the
loop (`env.name="calculator"`, traceable: the environment runs inside the
decode `while_loop`), and only the model's own tokens get policy loss; the
calculator's results are context. Compare with the same recipe and
`--config.env.name=''` (single-turn GRPO from the same SFT model).

    python -m rankjax.launch --config configs/grpo_tools_arith.py --workdir /tmp/tools
"""

from rankjax.config import (Config, DataCfg, EnvCfg, EvalCfg, GRPOCfg, ModelCfg, OptimCfg,
                            SampleCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="grpo_tools_arith", pipeline=("sft", "eval", "grpo", "eval"), log_every=20,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add",), min_digits=4, max_digits=6, cot=True,
                   tool_fraction=0.6, batch_size=32, max_length=72, max_prompt_length=16),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=2500),
      sample=SampleCfg(max_new_tokens=56, temperature=0.7),
      env=EnvCfg(name="calculator", max_turns=2, max_observation_tokens=12),
      grpo=GRPOCfg(steps=200, learning_rate=3e-4, num_prompts=16, group_size=8,
                   rewards=("correct",), scale_rewards="group", aggregation="dapo"),
      eval=EvalCfg(num_problems=200, num_samples=8, temperature=0.7),
  )
