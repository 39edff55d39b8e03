"""Real-size sharding plans on 8 fake devices, from abstract shapes only.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8. Prints one JSON
line: bytes per device of parameters + AdamW moments for each model.
"""

import json

import jax
import optax
from flax import nnx

from rankjax import models, parallel
from rankjax.train import tree_shardings

PLANS = {
    # Llama-3-8B (config.json of meta-llama/Meta-Llama-3.1-8B).
    "llama3_8b": models.ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, model_type="llama",
        rope=models.RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0,
                               original_max_position_embeddings=8192),
        param_dtype="bfloat16", dtype="bfloat16"),
    # Qwen2.5-7B.
    "qwen25_7b": models.ModelConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
        num_heads=28, num_kv_heads=4, head_dim=128, model_type="qwen2", attention_bias=True,
        rope=models.RopeConfig(theta=1000000.0), param_dtype="bfloat16", dtype="bfloat16"),
}


def main():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  out = {}
  for name, cfg in PLANS.items():
    params = nnx.state(models.create_abstract(cfg), nnx.Param)
    moments = jax.eval_shape(optax.adamw(1e-5).init, params)
    shardings = tree_shardings(params, mesh)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    per_device = parallel.bytes_per_device(params, mesh)
    out[name] = {
        "num_params": cfg.num_params,
        "param_bytes_total": int(total),
        "param_bytes_per_device": int(per_device),
        # AdamW keeps two moments shaped like the parameters (same layout).
        "adam_bytes_per_device": int(2 * per_device),
        "q_spec": str(jax.tree.leaves(shardings.layers.q)[0].spec),
        "embed_spec": str(jax.tree.leaves(shardings.embed)[0].spec),
        "moment_leaves": len(jax.tree.leaves(moments)),
    }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
