"""GRPO on GSM8K from a local Hugging Face checkpoint (e.g. Qwen2.5-0.5B-Instruct).

Nothing is downloaded: point `model.path` at a local directory holding
config.json, *.safetensors and tokenizer.json, and `data.path` at a local
GSM8K-format JSON Lines file ({"question", "answer": "... #### 72"}). The
reward is a Python numeric-answer verifier run on the host (TRL's
`f(prompts, completions, **columns)` convention through jax.pure_callback).

    python -m rankjax.launch --config configs/grpo_gsm8k.py --workdir runs/gsm8k \
        --config.model.path=/models/Qwen2.5-0.5B-Instruct \
        --config.data.path=/data/gsm8k/train.jsonl --config.data.eval_path=/data/gsm8k/test.jsonl
"""

from rankjax.config import (Config, DataCfg, EvalCfg, GRPOCfg, MeshCfg, ModelCfg, OptimCfg,
                            SampleCfg)


def get_config() -> Config:
  return Config(
      name="grpo_gsm8k", pipeline=("eval", "grpo", "eval"), log_every=5,
      model=ModelCfg(path="/models/Qwen2.5-0.5B-Instruct", dtype="bfloat16",
                     param_dtype="float32", remat=True, max_position_embeddings=32768),
      data=DataCfg(source="gsm8k", path="/data/gsm8k/train.jsonl",
                   eval_path="/data/gsm8k/test.jsonl", max_prompt_length=256,
                   max_length=512, num_train=7473, num_eval=200),
      optim=OptimCfg(learning_rate=1e-6, warmup_steps=10, weight_decay=0.0,
                     max_grad_norm=1.0),
      sample=SampleCfg(max_new_tokens=256, temperature=1.0),
      grpo=GRPOCfg(steps=500, num_prompts=16, group_size=8, num_minibatches=4, beta=0.04,
                   eps_low=0.2, eps_high=0.28, rewards=("correct",),
                   aggregation="dapo", mask_truncated=True),
      eval=EvalCfg(num_problems=200, num_samples=8),
      mesh=MeshCfg(data=1, fsdp=-1, tensor=1),
  )
