"""Beam search, step for step as transformers (>= 4.50, vectorised) defines it.

Each step keeps the top `K = max(2, 1 + n_eos) * num_beams` continuations
over all beams; the best `num_beams` that did not hit a stop (EOS or the
length limit) keep running, and those among the top `num_beams` that did are
scored `sum log p / len ** length_penalty` and merged into the finished set.
`early_stopping`: True stops a prompt once `num_beams` hypotheses are
finished; False and "never" use transformers' heuristics on the best running
score (the current length, or the maximum length when "never" and
length_penalty > 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from rankjax.models import KVCache, Transformer, default_positions
from rankjax.sampling._generate import DEFAULT_BUCKETS, pad_prompts
from rankjax.sampling._loop import _is_eos, _repeat_cache

_BIG = 1e9


@struct.dataclass
class BeamOutput:
  """tokens i32[B, N] best hypothesis (pad after it ends); scores f32[B]
  (length-penalised); lengths i32[B]; all_* the num_beams hypotheses, best
  first."""
  tokens: jax.Array
  scores: jax.Array
  lengths: jax.Array
  all_tokens: jax.Array
  all_scores: jax.Array
  all_lengths: jax.Array


@struct.dataclass
class _Beams:
  t: jax.Array               # i32[]: tokens generated so far
  seqs: jax.Array            # i32[B, nb, N] running
  scores: jax.Array          # f32[B, nb] running sum log p
  fin_seqs: jax.Array        # i32[B, nb, N]
  fin_scores: jax.Array      # f32[B, nb]
  fin_lengths: jax.Array     # i32[B, nb]
  fin_flags: jax.Array       # bool[B, nb]
  improvable: jax.Array      # bool[B, 1] the early-stop heuristic is unsatisfied
  all_hit: jax.Array         # bool[]: every kept continuation hit a stop
  cache: KVCache


def _gather(x, idx):
  """x[b, idx[b, j], ...] for [B, M, ...] x and [B, J] idx."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _step(s: _Beams, logits, *, nb, n, eos_ids, length_penalty, early_stopping):
  """Choose the next tokens from logits [B*nb, V]; reorder the cache."""
  b, _, _ = s.seqs.shape
  v = logits.shape[-1]
  keep = max(2, 1 + len(eos_ids)) * nb
  logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, nb, v)
  flat = (logp + s.scores[:, :, None]).reshape(b, nb * v)
  top_lp, top_idx = jax.lax.top_k(flat, keep)
  src, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
  top_seqs = _gather(s.seqs, src).at[:, :, s.t].set(tok)
  hits = _is_eos(tok.reshape(-1), eos_ids).reshape(b, keep) | (s.t + 1 >= n)

  # Running beams: the best continuations that did not stop.
  run_lp = top_lp - _BIG * hits
  _, sel = jax.lax.top_k(run_lp, nb)
  seqs, scores, beam_src = _gather(top_seqs, sel), _gather(run_lp, sel), _gather(src, sel)

  # Finished hypotheses: stopped continuations among the top nb.
  fin = top_lp / ((s.t + 1).astype(jnp.float32) ** length_penalty)
  just_done = hits & (jnp.arange(keep) < nb)[None]
  if early_stopping is True:
    fin = fin - _BIG * jnp.all(s.fin_flags, axis=-1, keepdims=True)
  fin = fin - _BIG * (~s.improvable) - _BIG * (~just_done)
  m_scores = jnp.concatenate([s.fin_scores, fin], 1)
  _, best = jax.lax.top_k(m_scores, nb)
  m_seqs = jnp.concatenate([s.fin_seqs, top_seqs], 1)
  m_lens = jnp.concatenate([s.fin_lengths, jnp.full_like(tok, s.t + 1)], 1)
  m_flags = jnp.concatenate([s.fin_flags, just_done], 1)
  fin_flags = _gather(m_flags, best)
  fin_scores = _gather(m_scores, best)

  # The early-stop heuristic, evaluated at the new length.
  if early_stopping == "never" and length_penalty > 0:
    hyp_len = jnp.float32(n)
  else:
    hyp_len = (s.t + 1).astype(jnp.float32)
  best_possible = scores[:, :1] / hyp_len ** length_penalty
  worst = jnp.where(fin_flags, jnp.min(fin_scores, axis=1, keepdims=True), -_BIG)
  improvable = s.improvable & jnp.any(best_possible > worst, axis=-1, keepdims=True)

  # Each beam takes its parent's slot table and mask; the keys and values
  # stay where they are (copying the whole cache every step cost more than
  # the rest of the beam step on CPU).
  rows = (jnp.arange(b)[:, None] * nb + beam_src).reshape(-1)
  cache = s.cache.replace(rows=jnp.take(s.cache.rows, rows, axis=0),
                          mask=jnp.take(s.cache.mask, rows, axis=0))
  return _Beams(t=s.t + 1, seqs=seqs, scores=scores, fin_seqs=_gather(m_seqs, best),
                fin_scores=fin_scores, fin_lengths=_gather(m_lens, best),
                fin_flags=fin_flags, improvable=improvable,
                all_hit=jnp.all(hits), cache=cache)


def beam_search_loop(model: Transformer, prompt_tokens_bp, prompt_mask_bp, *,
                     num_beams: int, max_new_tokens: int, eos_ids: tuple[int, ...],
                     length_penalty: float = 1.0, early_stopping=False,
                     pad_id: int = 0) -> BeamOutput:
  """Pure, jittable beam search over left-padded prompts [B, P]."""
  b, p = prompt_tokens_bp.shape
  nb, n = num_beams, max_new_tokens
  mask = prompt_mask_bp.astype(bool)
  positions = default_positions(mask)
  cache = model.init_cache(b, p + n)
  # Split once: the decode loop reads each layer's weights in place, and the
  # LM head in the layout that few-row matmuls stream fastest.
  weights, head = model.layer_weights(), model.decode_head()
  hidden, cache = model.forward_cached(prompt_tokens_bp, positions, mask, cache, weights)
  logits = jnp.repeat(model.logits(hidden[:, -1:], head)[:, 0], nb, axis=0)
  next_pos = jnp.repeat(positions[:, -1] + 1, nb)
  seqs = jnp.full((b, nb, n), pad_id, jnp.int32)
  s = _Beams(t=jnp.zeros((), jnp.int32), seqs=seqs,
             scores=jnp.tile(jnp.asarray([0.0] + [-_BIG] * (nb - 1), jnp.float32), (b, 1)),
             fin_seqs=seqs, fin_scores=jnp.full((b, nb), -_BIG, jnp.float32),
             fin_lengths=jnp.zeros((b, nb), jnp.int32), fin_flags=jnp.zeros((b, nb), bool),
             improvable=jnp.ones((b, 1), bool), all_hit=jnp.zeros((), bool),
             cache=_repeat_cache(cache, nb).with_slot_table())
  step = functools.partial(_step, nb=nb, n=n, eos_ids=eos_ids,
                           length_penalty=length_penalty, early_stopping=early_stopping)
  s = step(s, logits)

  def cond(s):
    open_beam = ~(jnp.all(s.fin_flags) & (early_stopping is True))
    return (s.t < n) & jnp.any(s.improvable) & open_beam & ~s.all_hit

  def body(s):
    last = s.seqs[:, :, s.t - 1].reshape(-1)
    pos = (next_pos + s.t - 1)[:, None]
    hidden, cache = model.forward_cached(last[:, None], pos, jnp.ones((b * nb, 1), bool), s.cache,
                                         weights)
    return step(s.replace(cache=cache), model.logits(hidden, head)[:, 0])

  s = jax.lax.while_loop(cond, body, s)
  return BeamOutput(tokens=s.fin_seqs[:, 0], scores=s.fin_scores[:, 0],
                    lengths=s.fin_lengths[:, 0], all_tokens=s.fin_seqs,
                    all_scores=s.fin_scores, all_lengths=s.fin_lengths)


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "num_beams", "max_new_tokens", "eos_ids", "length_penalty",
    "early_stopping", "pad_id"))
def _beam_jit(graphdef, state, tokens, mask, **kw):
  return beam_search_loop(nnx.merge(graphdef, state), tokens, mask, **kw)


def beam_search(model: Transformer, prompts, *, num_beams: int = 4,
                max_new_tokens: int = 64, length_penalty: float = 1.0,
                early_stopping: bool | str = False, eos_token_ids=(),
                pad_token_id: int = 0, buckets=DEFAULT_BUCKETS,
                temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> BeamOutput:
  """Beam search over ragged prompts; returns the best hypothesis per prompt.

  Sampling knobs are accepted only to reject them clearly: beam search here
  is deterministic.
  """
  if temperature > 0 or top_k or top_p < 1.0:
    raise ValueError("beam search with sampling (temperature/top_k/top_p) is not supported; "
                     "use sampling.generate with num_samples for stochastic candidates")
  if num_beams < 1:
    raise ValueError(f"num_beams must be >= 1, got {num_beams}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if early_stopping not in (True, False, "never"):
    raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
  cfg = model.config
  tokens, mask, lengths = pad_prompts(prompts, cfg.vocab_size, pad_id=pad_token_id,
                                      buckets=buckets)
  if lengths.max() + max_new_tokens > cfg.max_position_embeddings:
    raise ValueError(f"prompt of {lengths.max()} tokens + max_new_tokens {max_new_tokens} "
                     f"exceeds max_position_embeddings {cfg.max_position_embeddings}")
  graphdef, state = nnx.split(model)
  # max_new_tokens is exact here (not bucketed): the length limit is part of
  # the beam scores ("never") and of when hypotheses are forced to finish.
  return _beam_jit(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask),
                   num_beams=num_beams, max_new_tokens=int(max_new_tokens),
                   eos_ids=tuple(int(e) for e in eos_token_ids),
                   length_penalty=float(length_penalty), early_stopping=early_stopping,
                   pad_id=pad_token_id)

