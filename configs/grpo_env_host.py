"""GRPO against a host environment: the number-guessing game
(`env.name="guess"`, plain Python called through `io_callback` at turn ends).

Every prompt is the same ("I picked an integer from 0 to 15 ..."); the
secret lives in the record the environment is reset from, so the policy
only wins by reading the game's answers (higher / lower / correct). SFT
shows binary searches; GRPO plays with the game in the loop, rewarded by
it (`grpo.rewards=("env",)`): 1 for the correct guess, 0 otherwise.

    python -m rankjax.launch --config configs/grpo_env_host.py --workdir /tmp/guess
"""

from rankjax.config import (Config, DataCfg, EnvCfg, EvalCfg, GRPOCfg, ModelCfg, OptimCfg,
                            SampleCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="grpo_env_host", task="examples/guess/task.py:make_task",
      pipeline=("sft", "eval", "grpo", "eval"), log_every=10,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(batch_size=32, max_length=256, max_prompt_length=128),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=300),
      sample=SampleCfg(max_new_tokens=112, temperature=1.0),
      env=EnvCfg(name="guess", max_turns=5, max_observation_tokens=32),
      grpo=GRPOCfg(steps=40, learning_rate=3e-4, num_prompts=8, group_size=8, rewards=("env",)),
      eval=EvalCfg(num_problems=64, num_samples=4),
  )
