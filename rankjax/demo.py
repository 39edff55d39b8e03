"""The built-in demo: the default `python -m rankjax.launch` recipe.

It needs no files: the built-in arithmetic task, the character tokenizer
and a small model trained from scratch, on CPU.
"""

from rankjax.config import Config, ModelCfg


def get_config() -> Config:
  return Config(name="demo", pipeline=("generate",), prompt="12+34=",
                model=ModelCfg(hidden_size=64, num_layers=2, num_heads=4,
                               num_kv_heads=2, head_dim=16, intermediate_size=128))
