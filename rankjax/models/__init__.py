"""Decoder-only transformers (Llama 3.x, Qwen2/2.5, Qwen3) in Flax NNX.

    model = models.from_pretrained(hf_dir, dtype=jnp.float32)
    logits = model(tokens)                      # int32[B, T] -> [B, T, V]
    models.save_pretrained(model, out_dir)      # transformers loads it back
    model = models.from_gguf("model.Q4_K_M.gguf")  # llama.cpp file, dequantized
    model = models.load(path)                   # either, told apart by the path
"""

from rankjax.models._config import (
    SUPPORTED_MODEL_TYPES,
    ModelConfig,
    RopeConfig,
    config_from_hf,
    config_to_hf,
)
from rankjax.models._lora import LORA_TARGETS, apply_lora, lora_targets, merge_lora, zero_lora
from rankjax.models._hf import (
    CheckpointError,
    check_checkpoint_dir,
    from_hf_tensors,
    from_pretrained,
    load_config,
    save_pretrained,
)
from rankjax.models._gguf import (
    GGUF_ARCHITECTURES,
    GGUF_TENSOR_TYPES,
    from_gguf,
    load_gguf_config,
)
from rankjax.models._load import load
from rankjax.models._transformer import (
    KVCache,
    Transformer,
    create,
    create_abstract,
    default_positions,
    init_cache,
    write_slots,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES", "ModelConfig", "RopeConfig", "config_from_hf",
    "config_to_hf", "CheckpointError", "check_checkpoint_dir", "from_pretrained", "load_config",
    "save_pretrained", "from_hf_tensors", "GGUF_ARCHITECTURES", "GGUF_TENSOR_TYPES",
    "from_gguf", "load_gguf_config", "load", "KVCache", "Transformer", "create", "create_abstract",
    "default_positions", "init_cache", "write_slots",
    "LORA_TARGETS", "apply_lora", "lora_targets", "merge_lora", "zero_lora",
]
