"""The built-in demo: the default `python -m rankjax.launch` recipe.

It needs no files: built-in arithmetic (2-digit addition), the character
tokenizer and a small model trained from scratch, on CPU, end to end:

  sft     on imperfect demonstrations: half of the answers are wrong
          (`data.sft_noise=0.5`), so the model proposes right and wrong
          answers and its own likelihood cannot tell them apart;
  eval    pass@1 / maj@8 / pass@8 / best-of-8 on held-out problems;
  grpo    8 samples per prompt, scored by the verifier inside the compiled
          step: the ranking moves toward verified answers;
  eval    the same held-out problems, same samples' seeds;
  rerank  best-of-N and majority vote at inference; the comparison table,
          summary.json and plots (reward curve, pass@k curves).
"""

from rankjax.config import (Config, DataCfg, EvalCfg, GRPOCfg, ModelCfg, OptimCfg,
                            SampleCfg, SFTCfg)


def get_config() -> Config:
  return Config(
      name="demo", pipeline=("sft", "eval", "grpo", "eval", "rerank"), log_every=50,
      model=ModelCfg(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     head_dim=32, intermediate_size=384),
      data=DataCfg(source="arithmetic", ops=("add",), max_digits=2, sft_noise=0.5,
                   batch_size=32, max_length=32, max_prompt_length=16),
      optim=OptimCfg(learning_rate=3e-3, warmup_steps=10),
      sft=SFTCfg(steps=3000),
      sample=SampleCfg(max_new_tokens=6, temperature=1.0),
      grpo=GRPOCfg(steps=800, learning_rate=5e-4, num_prompts=16, group_size=8,
                   num_iterations=2, rewards=("correct",)),
      eval=EvalCfg(num_problems=200, num_samples=8),
  )
