"""One entry point for a local checkpoint: a Hugging Face directory or a
llama.cpp GGUF file, told apart by the path."""

from __future__ import annotations

import os

from rankjax.models._gguf import from_gguf
from rankjax.models._hf import from_pretrained
from rankjax.models._transformer import Transformer


def load(path: str | os.PathLike, **kwargs) -> Transformer:
  """`from_gguf(path)` for a .gguf file, else `from_pretrained(path)`;
  keyword arguments as theirs (dtype, param_dtype, remat, ...)."""
  if os.fspath(path).lower().endswith(".gguf"):
    return from_gguf(path, **kwargs)
  return from_pretrained(path, **kwargs)
