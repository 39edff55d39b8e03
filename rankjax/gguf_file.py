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
import os


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
