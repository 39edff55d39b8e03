"""The one error type for problems with what the user gave us.

Config keys, data rows and files, checkpoints, tokenizers and reward
functions each raise their own subclass of `UserInputError`, whose message
names the file, line, field or key. `python -m rankjax.launch` prints such an
error as one line (`error: <message>`) and keeps tracebacks for bugs;
`find_user_error` is how it tells them apart.
"""

from __future__ import annotations

import collections
import importlib
import re


class UserInputError(ValueError):
  """A problem with what the user gave us: the message names the file, line,
  field or key. A ValueError, so `except ValueError` keeps catching it."""


# What a wrapper that kept only the text shows of our error: grain's
# `UnfilteredStackTraceError` holds `traceback.format_exception_only(e)`,
# i.e. "rankjax.data._formats.DataError: f.jsonl:3: invalid JSON ...".
_QUALIFIED = re.compile(r"\b(rankjax(?:\.\w+)*)\.(\w+): (.+)")
# What JAX shows of an error raised inside a host callback (io_callback,
# pure_callback): the class's bare name, "EnvError: environment ...".
_BARE = re.compile(r"\b([A-Z]\w*Error): (.+)")


def _chain(error: BaseException):
  """`error` and every exception behind it, outermost first: causes,
  contexts and the members of exception groups."""
  seen, queue = set(), collections.deque([error])
  while queue:
    e = queue.popleft()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    queue.extend((e.__cause__, e.__context__, *getattr(e, "exceptions", ())))


def _from_text(text: str) -> UserInputError | None:
  """Our error rebuilt from its `module.Class: message` text, if the class is
  a UserInputError (message intact; extra attributes are lost)."""
  for match in _QUALIFIED.finditer(text):
    module, name, message = match.groups()
    try:
      cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
      continue
    if isinstance(cls, type) and issubclass(cls, UserInputError):
      try:
        return cls(message)
      except TypeError:  # a constructor that wants more than the message
        return UserInputError(message)
  by_name = {cls.__name__: cls for cls in _subclasses(UserInputError)}
  for match in _BARE.finditer(text):
    cls = by_name.get(match.group(1))
    if cls is not None:
      try:
        return cls(match.group(2))
      except TypeError:
        return UserInputError(match.group(2))
  return None


def _subclasses(cls: type) -> list[type]:
  """`cls` and every subclass of it defined so far (an error raised inside
  a callback was raised by imported code, so its class is among them)."""
  out, queue = [], [cls]
  while queue:
    c = queue.pop()
    out.append(c)
    queue.extend(c.__subclasses__())
  return out


def find_user_error(error: BaseException) -> UserInputError | None:
  """The UserInputError behind `error`, or None when it is a bug.

  Looks at `error` itself, then along its `__cause__`/`__context__` chain
  and into exception groups (outermost first). grain re-raises an error from
  a data source or map function as the same object (threads) or an
  unpickled copy with its attributes (worker processes), so the chain finds
  it; where a wrapper kept only the text, the error is rebuilt from it.
  """
  chain = list(_chain(error))
  for e in chain:
    if isinstance(e, UserInputError):
      return e
  for e in chain:
    found = _from_text(str(e))
    if found is not None:
      return found
  return None


def one_line(error: BaseException) -> str:
  """The error's message on one line (its lines joined with "; ")."""
  lines = [line.strip() for line in str(error).splitlines()]
  return "; ".join(line for line in lines if line) or type(error).__name__
