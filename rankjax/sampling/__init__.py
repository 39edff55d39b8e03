"""Sampling: one jit-compiled prefill + `lax.while_loop` decode.

    cfg = sampling.SamplingConfig(max_new_tokens=64, temperature=0.0,
                                  eos_token_ids=(eos,))
    out = sampling.generate(model, prompts, cfg, rng=jax.random.key(0))
    best = sampling.beam_search(model, prompts, num_beams=4, max_new_tokens=64)

`sample_loop` / `beam_search_loop` are the pure functions behind them, for
use inside other jitted programs (the GRPO step samples in its own jit).
"""

from rankjax.sampling._beam import BeamOutput, beam_search, beam_search_loop
from rankjax.sampling._generate import (
    DEFAULT_BUCKETS,
    SamplingConfig,
    bucket,
    generate,
    pad_prompts,
)
from rankjax.sampling._loop import SampleOutput, sample_loop
from rankjax.sampling._processors import RowParams, argmax, filter_logits, sample_tokens

__all__ = [
    "BeamOutput", "beam_search", "beam_search_loop", "DEFAULT_BUCKETS",
    "SamplingConfig", "bucket", "generate", "pad_prompts", "SampleOutput",
    "sample_loop", "RowParams", "argmax", "filter_logits", "sample_tokens",
]
