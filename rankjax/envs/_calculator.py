"""The calculator: a tool for the arithmetic task, in two implementations
that follow one rule, so a traceable rollout equals a host rollout.

The model writes `<calc>A op B</calc>` (op one of + - *, A and B of 1 to
`MAX_OPERAND_DIGITS` digits); the observation is the result and a newline
(`"58023\\n"`). Anything else between the last `<calc>` of the turn and the
`</calc>` that ended it, or a product beyond int32, gives `"error\\n"`
(an error turn). Rewards come from the task's verifier on the final answer;
the calculator itself gives 0.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from rankjax.envs._protocol import HostStep, Limits, Traceable

OPEN, CLOSE = "<calc>", "</calc>"
MAX_OPERAND_DIGITS = 8
ERROR = "error\n"
_INT32_MAX = 2**31 - 1
_EXPR = re.compile(rf"([0-9]{{1,{MAX_OPERAND_DIGITS}}})([+\-*])([0-9]{{1,{MAX_OPERAND_DIGITS}}})")


def evaluate(expression: str) -> str:
  """The observation for one expression (the host rule)."""
  m = _EXPR.fullmatch(expression)
  if not m:
    return ERROR
  a, op, b = int(m[1]), m[2], int(m[3])
  value = a + b if op == "+" else a - b if op == "-" else a * b
  return ERROR if abs(value) > _INT32_MAX else f"{value}\n"


def expression_of(turn_text: str) -> str | None:
  """The text between the turn's last `<calc>` and its closing `</calc>`."""
  if not turn_text.endswith(CLOSE):
    return None
  body = turn_text[: -len(CLOSE)]
  start = body.rfind(OPEN)
  return None if start < 0 else body[start + len(OPEN):]


class HostCalculator:
  """The calculator as a host environment (`rankjax.envs.host`)."""
  name = "calculator"
  turn_end = CLOSE

  def reset(self, record):
    return None

  def step(self, state, turn_text):
    expression = expression_of(turn_text)
    observation = ERROR if expression is None else evaluate(expression)
    return HostStep(state, observation, 0.0, False, observation == ERROR)


def _window_matches(tokens_c, ids) -> jax.Array:
  """bool[C]: tokens[i : i + len(ids)] == ids (False where it runs off the end)."""
  c, k = tokens_c.shape[0], len(ids)
  padded = jnp.concatenate([tokens_c, jnp.full((k,), -1, tokens_c.dtype)])
  hits = jnp.ones((c,), bool)
  for j, t in enumerate(ids):
    hits &= padded[j:j + c] == t
  return hits


def _digits_value(digits_c, start, stop):
  """Σ digits[i]·10^(stop-1-i) over start <= i < stop (int32)."""
  i = jnp.arange(digits_c.shape[0])
  inside = (i >= start) & (i < stop)
  power = jnp.where(inside, stop - 1 - i, 0)
  return jnp.sum(jnp.where(inside, digits_c * (10 ** power), 0))


def calculator(tokenizer, limits: Limits = Limits(max_observation_tokens=12)) -> Traceable:
  """The calculator as a traceable environment over a character tokenizer
  (one token per character: the built-in `CharTokenizer`)."""
  cid = tokenizer.char_id
  open_ids = tuple(cid(c) for c in OPEN)
  close_ids = tuple(cid(c) for c in CLOSE)
  digit0, nl, minus = cid("0"), cid("\n"), cid("-")
  ops = jnp.asarray([cid("+"), cid("-"), cid("*")])
  error_ids = tuple(cid(c) for c in ERROR)
  width = limits.max_observation_tokens
  if width < 12:
    raise ValueError(f"the calculator needs max_observation_tokens >= 12, got {width}")

  def reset(record):
    return jnp.zeros((), jnp.int32)

  def step(state, tokens_c, turn_c):
    c = tokens_c.shape[0]
    i = jnp.arange(c)
    last = jnp.max(jnp.where(turn_c, i, -1))            # the turn's last token
    stop = last + 1 - len(close_ids)                     # where `</calc>` begins
    closed = (stop >= 0) & jnp.all(
        jnp.where(jnp.arange(len(close_ids)) + stop >= 0,
                  tokens_c[jnp.clip(stop + jnp.arange(len(close_ids)), 0, c - 1)]
                  == jnp.asarray(close_ids), False))
    opens = _window_matches(tokens_c, open_ids) & turn_c & (i + len(open_ids) <= stop)
    start = jnp.max(jnp.where(opens, i, -1)) + len(open_ids)   # first expression token
    found = closed & jnp.any(opens)
    inside = (i >= start) & (i < stop)
    is_digit = (tokens_c >= digit0) & (tokens_c <= digit0 + 9)
    is_op = jnp.any(tokens_c[:, None] == ops[None], axis=-1)
    op_at = jnp.min(jnp.where(inside & is_op, i, c))
    n_ops = jnp.sum(inside & is_op)
    len_a, len_b = op_at - start, stop - op_at - 1
    well_formed = (found & (n_ops == 1) & jnp.all(~inside | is_digit | is_op)
                   & (len_a >= 1) & (len_a <= MAX_OPERAND_DIGITS)
                   & (len_b >= 1) & (len_b <= MAX_OPERAND_DIGITS))
    digits = jnp.where(is_digit, tokens_c - digit0, 0).astype(jnp.int32)
    a = _digits_value(digits, start, op_at)
    b = _digits_value(digits, op_at + 1, stop)
    op = tokens_c[jnp.clip(op_at, 0, c - 1)]
    product = a * b                                      # wraps beyond int32
    overflow = (op == ops[2]) & (b != 0) & ((product < 0) | (product // jnp.maximum(b, 1) != a))
    value = jnp.where(op == ops[0], a + b, jnp.where(op == ops[1], a - b, product))
    ok = well_formed & ~overflow
    obs, length = _number_tokens(value, digit0, minus, nl, width)
    error = jnp.zeros((width,), jnp.int32).at[:len(error_ids)].set(jnp.asarray(error_ids))
    obs = jnp.where(ok, obs, error)
    length = jnp.where(ok, length, len(error_ids))
    mask = jnp.arange(width) < length
    return state + 1, jnp.where(mask, obs, 0), mask, jnp.float32(0.0), jnp.bool_(False), ~ok

  return Traceable("calculator", reset, step, (close_ids,), limits)


def _number_tokens(value, digit0, minus, nl, width):
  """The tokens of f"{value}\\n", left-aligned in `width` slots, and their count."""
  magnitude = jnp.abs(value)
  places = 10
  digits = (magnitude // (10 ** jnp.arange(places - 1, -1, -1))) % 10   # most significant first
  n_digits = jnp.maximum(1, places - jnp.argmax(jnp.concatenate([digits[:-1] != 0, jnp.array([True])])))
  neg = value < 0
  k = jnp.arange(width)
  pos = k - neg.astype(jnp.int32)                      # index into the digits
  digit_tok = digit0 + digits[jnp.clip(places - n_digits + pos, 0, places - 1)]
  length = neg.astype(jnp.int32) + n_digits + 1
  tok = jnp.where(neg & (k == 0), minus, jnp.where(k == length - 1, nl, digit_tok))
  return tok.astype(jnp.int32), length
