"""A decoder-only transformer (Llama 3.x / Qwen2 / Qwen3) in Flax NNX.

Layer weights are stacked along a leading L axis. The full forward runs the
layers under one `lax.scan`, so its compile time stays flat in depth; the
cached forward (decode) and the grouped forward (GRPO) run them unrolled,
each on its own weights (slicing stacked weights inside a hot loop copied
them). Each parameter carries its logical axis names (`logical_axes`
metadata); `rankjax.parallel` maps them to mesh axes through one rules table.

Three entry points, three blocks sharing `_qkv` and `_finish_block`:
  * `model(tokens, ...)` — the full forward (training, scoring), with
    optional positions, segment ids (packing) and a padding mask;
  * `model.forward_cached(tokens, positions, token_mask, cache)` — writes T
    new tokens into a preallocated KV cache and attends over it (prefill with
    T = prompt length, decode with T = 1): the sampler's hot path;
  * `model.grouped_hidden_states(prefix, prefix_mask, suffix, suffix_mask)` —
    G continuations per prefix with each prefix run once (GRPO's groups).

Axis legend: B batch, T query length, S key/cache length, D model width,
N query heads, K kv heads, Q = N / K query heads per kv head, G group
(continuations per prefix), H head dim, F MLP width, V vocab, L layers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from rankjax.models._config import ModelConfig, RopeConfig

# A large finite negative instead of -inf: fully masked rows (left padding)
# then give a uniform softmax instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


@struct.dataclass
class KVCache:
  """Preallocated keys/values for incremental decoding.

  k, v:  L arrays [B, K, S, H], one per layer — slot s of row b holds the
         token written at step s (head-major: decode attention reads each
         head's [S, H] keys as they lie, with no per-step transpose; one array
         per layer, so attention reads its layer in place: slicing a stacked
         [L, ...] cache copied each layer's keys and values every step).
  mask:  bool[B, S] — slot holds a real (non-padding) token.
  index: int32[] — the next slot to write; every row writes the same slot, so
         ragged prompts are left-padded and carry their own positions. Or
         int32[B]: each row writes at its own slot (multi-turn sampling, where
         an environment's observation enters some rows' caches as a chunk).
  rows:  int32[B, S] or None — row b reads slot s from row rows[b, s] (a slot
         table, as in paged attention). Beam search reorders this table
         instead of copying the whole cache each step; rows always write
         their new slots into their own storage. None: each row reads its own.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  mask: jax.Array
  index: jax.Array
  rows: jax.Array | None = None

  def with_slot_table(self) -> "KVCache":
    """This cache with an identity slot table (each row reads its own)."""
    return self.replace(rows=_own_rows(*self.mask.shape))

  @property
  def max_length(self) -> int:
    return self.k[0].shape[2]


def _own_rows(batch: int, slots: int) -> jax.Array:
  """i32[batch, slots]: every slot of row b read from row b."""
  return jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, slots))


def init_cache(cfg: ModelConfig, batch: int, max_length: int,
               dtype=None) -> KVCache:
  dtype = dtype or cfg.dtype
  shape = (batch, cfg.num_kv_heads, max_length, cfg.head_dim)
  layers = range(cfg.num_layers)
  return KVCache(k=tuple(jnp.zeros(shape, dtype) for _ in layers),
                 v=tuple(jnp.zeros(shape, dtype) for _ in layers),
                 mask=jnp.zeros((batch, max_length), bool),
                 index=jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------------------
# Pure pieces.
# ---------------------------------------------------------------------------


def rms_norm(x, weight, eps):
  # Normalise in float32 and cast back before the weight, as transformers does.
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight * x32.astype(x.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> jax.Array:
  """Inverse frequencies, including `linear` and `llama3` scaling."""
  inv = 1.0 / (rope.theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if rope.rope_type == "linear":
    return inv / rope.factor
  if rope.rope_type != "llama3":
    return inv
  old_len = rope.original_max_position_embeddings
  low_wavelen = old_len / rope.low_freq_factor
  high_wavelen = old_len / rope.high_freq_factor
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > low_wavelen, inv / rope.factor, inv)
  smooth = (old_len / wavelen - rope.low_freq_factor) / (
      rope.high_freq_factor - rope.low_freq_factor)
  smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def rope_sin_cos(positions_bt, inv_freq):
  angles = positions_bt.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x_btnh, sin, cos):
  # Half-rotation layout (transformers' rotate_half), computed in float32.
  x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_btnh.dtype)


def head_major_attention(q_btnh, k_bksh, v_bksh, mask_bts):
  """Grouped-query attention over head-major keys/values [B, K, S, H] (the
  KV cache's layout); softmax in float32."""
  b, t, n, h = q_btnh.shape
  k_heads = k_bksh.shape[1]
  q = q_btnh.reshape(b, t, k_heads, n // k_heads, h)
  scores = jnp.einsum("BTKQH,BKSH->BKQTS", q, k_bksh,
                      preferred_element_type=jnp.float32) * (h ** -0.5)
  scores = jnp.where(mask_bts[:, None, None], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_bksh.dtype)
  out = jnp.einsum("BKQTS,BKSH->BKQTH", probs, v_bksh)
  if t == 1:
    # A decode step: keep the [Q, S] x [S, H] matmuls as they are. Folding the
    # transpose below into them made XLA CPU compute H-major outputs from
    # strided values (~7% of a batch-16 decode step).
    out = jax.lax.optimization_barrier(out)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def attention(q_btnh, k_bskh, v_bskh, mask_bts):
  """Grouped-query attention over keys/values [B, S, K, H]."""
  return head_major_attention(q_btnh, k_bskh.transpose(0, 2, 1, 3),
                              v_bskh.transpose(0, 2, 1, 3), mask_bts)


# Query block of the causal full forward (see `causal_attention`).
_QUERY_BLOCK = 128


def causal_attention(q_btnh, k_bskh, v_bskh, mask_bts, block: int = _QUERY_BLOCK):
  """`attention` under a causal mask, by query blocks: block [i, i + C)
  attends to keys [0, i + C) only, skipping the upper triangle that the mask
  hides anyway (~40% less attention work and memory at T = 512 on CPU).

  Exact for every query with a visible key (masked scores weigh exactly 0).
  A query that sees no key at all (padding) averages its block's values
  instead of all values: padding outputs are garbage either way.
  """
  t = q_btnh.shape[1]
  if t <= block:
    return attention(q_btnh, k_bskh, v_bskh, mask_bts)
  return jnp.concatenate(
      [attention(q_btnh[:, i:i + block], k_bskh[:, :i + block], v_bskh[:, :i + block],
                 mask_bts[:, i:i + block, :i + block]) for i in range(0, t, block)], axis=1)


def grouped_attention(q_rtnh, k_prefix_bskh, v_prefix_bskh, k_rtkh, v_rtkh,
                      prefix_mask_bs, mask_rtt, block: int = _QUERY_BLOCK):
  """`_grouped_attention` by query blocks of `block` continuation tokens,
  each rematerialised in the backward (`jax.checkpoint`): block [i, i + C)
  attends to the prefix and to its continuation's keys [0, i + C), and only
  one block's [R, K, C, Q, S + i + C] scores are alive at a time, not the
  whole [R, K, T, Q, S + T] (at 1024 new tokens these dominate a GRPO
  update's memory). Exact for every query that sees a key: each query's
  softmax still spans all of its visible keys."""
  t = q_rtnh.shape[1]
  if t <= block:
    return _grouped_attention(q_rtnh, k_prefix_bskh, v_prefix_bskh, k_rtkh, v_rtkh,
                              prefix_mask_bs, mask_rtt)
  one = jax.checkpoint(_grouped_attention)
  return jnp.concatenate(
      [one(q_rtnh[:, i:i + block], k_prefix_bskh, v_prefix_bskh, k_rtkh[:, :i + block],
           v_rtkh[:, :i + block], prefix_mask_bs, mask_rtt[:, i:i + block, :i + block])
       for i in range(0, t, block)], axis=1)


def _grouped_attention(q_rtnh, k_prefix_bskh, v_prefix_bskh, k_rtkh, v_rtkh,
                       prefix_mask_bs, mask_rtt):
  """Attention of R = B·G continuations over their shared prefix and
  themselves, the prefix keys/values never copied G times.

  Continuation r of prefix r // G sees every real prefix slot
  (`prefix_mask_bs`) and its own tokens under `mask_rtt` (causal & real).
  Equal to `attention` over [repeat(prefix, G) ++ continuation] keys: one
  softmax over both key sets, in float32. Here Q = N / K query heads per kv
  head, G continuations per prefix, M the query rows of one matmul.

  Each score/value product is a batched matmul with its batch axes leading
  and one [M, H] x [H, S] contraction (all G·T·Q queries of a prefix against
  its keys): XLA CPU runs these ~1.4x faster, forward and backward, than the
  6-D einsums they replace.
  """
  r, t, n, h = q_rtnh.shape
  b, s, kh, _ = k_prefix_bskh.shape
  u = k_rtkh.shape[1]  # own keys: t, or more for a query block (`grouped_attention`)
  g, qg = r // b, n // kh
  scale = h ** -0.5

  def heads_first(x):                                                   # [., K, S, H]
    return x.transpose(0, 2, 1, 3)

  q6 = q_rtnh.reshape(b, g, t, kh, qg, h)
  # Against the prefix: batch (B, K), M = G·T·Q.
  q_pre = q6.transpose(0, 3, 1, 2, 4, 5).reshape(b, kh, g * t * qg, h)
  s_pre = jnp.einsum("BKMH,BKSH->BKMS", q_pre, heads_first(k_prefix_bskh),
                     preferred_element_type=jnp.float32) * scale
  s_pre = s_pre.reshape(b, kh, g, t, qg, s).transpose(0, 2, 1, 3, 4, 5)  # [B, G, K, T, Q, S]
  # Against itself: batch (R, K), M = T·Q.
  q_own = q6.reshape(r, t, kh, qg, h).transpose(0, 2, 1, 3, 4).reshape(r, kh, t * qg, h)
  s_own = jnp.einsum("RKMH,RKSH->RKMS", q_own, heads_first(k_rtkh),
                     preferred_element_type=jnp.float32) * scale
  s_own = s_own.reshape(b, g, kh, t, qg, u)
  s_pre = jnp.where(prefix_mask_bs[:, None, None, None, None, :], s_pre, _MASK_VALUE)
  s_own = jnp.where(mask_rtt.reshape(b, g, 1, t, 1, u), s_own, _MASK_VALUE)
  probs = jax.nn.softmax(jnp.concatenate([s_pre, s_own], axis=-1), axis=-1)
  probs = probs.astype(v_rtkh.dtype)
  p_pre = probs[..., :s].transpose(0, 2, 1, 3, 4, 5).reshape(b, kh, g * t * qg, s)
  p_own = probs[..., s:].reshape(r, kh, t * qg, u)
  # The two halves of one weighted sum: added in float32, rounded once.
  o_pre = jnp.einsum("BKMS,BKSH->BKMH", p_pre, heads_first(v_prefix_bskh),
                     preferred_element_type=jnp.float32)
  o_own = jnp.einsum("RKMS,RKSH->RKMH", p_own, heads_first(v_rtkh),
                     preferred_element_type=jnp.float32)
  o_pre = o_pre.reshape(b, kh, g, t, qg, h).transpose(0, 2, 3, 1, 4, 5)  # [B, G, T, K, Q, H]
  o_own = o_own.reshape(b, g, kh, t, qg, h).transpose(0, 1, 3, 2, 4, 5)
  return (o_pre + o_own).reshape(r, t, n, h).astype(v_rtkh.dtype)


def _proj(spec, x, w, name):
  """`einsum(spec, x, w[name])`, plus the LoRA term (x·A)·B when `w` holds
  `<name>_lora_a/_lora_b` (see models/_lora.py; B comes pre-scaled).

  Every projection contracts x's trailing axes with w's leading ones, so it
  runs as ONE 2-D matmul over all rows of x: [rows, in] @ [in, out]. On
  XLA CPU the 3-D einsum's backward transposed [B·T, F] activations and fed
  both-transposed operands to the weight-gradient dot (SwiGLU MLP forward +
  backward 430 ms -> 260 ms at 4288 rows of the bench model).

  The low-rank path costs 2·r·(in + out) extra FLOPs per token and keeps
  the frozen W out of the gradient; merging W + A·B per forward would be
  exact too but needs a full-size transient weight and weight gradient.
  """
  x_axes, w_axes = spec.split("->")[0].split(",")
  n_in = sum(c in x_axes for c in w_axes)
  lead, out = x.shape[:x.ndim - n_in], w[name].shape[n_in:]
  if x.shape[x.ndim - n_in:] != w[name].shape[:n_in]:
    raise ValueError(f"{name}: {spec} got x {x.shape} and w {w[name].shape}")
  rows = x.reshape(math.prod(lead), -1)
  y = rows @ w[name].reshape(rows.shape[1], -1)
  if name + "_lora_a" in w:
    a = w[name + "_lora_a"].reshape(rows.shape[1], -1)     # [in, R]
    y = y + (rows @ a) @ w[name + "_lora_b"].reshape(a.shape[1], -1)
  return y.reshape(*lead, *out)


def _mlp(h, w):
  gate = _proj("BTD,DF->BTF", h, w, "gate")
  up = _proj("BTD,DF->BTF", h, w, "up")
  return _proj("BTF,FD->BTD", jax.nn.silu(gate) * up, w, "down")


def _qkv(x, w, cfg: ModelConfig, sin, cos):
  h = rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
  q = _proj("BTD,DNH->BTNH", h, w, "q")
  k = _proj("BTD,DKH->BTKH", h, w, "k")
  v = _proj("BTD,DKH->BTKH", h, w, "v")
  if cfg.attention_bias:
    q, k, v = q + w["q_bias"], k + w["k_bias"], v + w["v_bias"]
  if cfg.qk_norm:
    q = rms_norm(q, w["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, w["k_norm"], cfg.rms_norm_eps)
  return apply_rope(q, sin, cos), apply_rope(k, sin, cos), v


def _finish_block(x, attn_btnh, w, cfg: ModelConfig):
  x = x + _proj("BTNH,NHD->BTD", attn_btnh, w, "o")
  return x + _mlp(rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps), w)


def block(x_btd, w, *, cfg: ModelConfig, sin, cos, mask_bts):
  """One layer over the tokens in hand (no cache; the mask is causal)."""
  q, k, v = _qkv(x_btd, w, cfg, sin, cos)
  return _finish_block(x_btd, causal_attention(q, k, v, mask_bts), w, cfg)


def grouped_block(x_bud, w, *, cfg: ModelConfig, sin, cos, prefix_mask_bpp, prefix_mask_bs,
                  mask_rtt):
  """One layer over B rows of U = P + G·T tokens: prefix b, then its G
  continuations. Every per-token piece (norms, projections, MLP) runs as one
  [B·U, D] matmul; only attention splits the row (see `grouped_attention`).
  The batch axis stays leading, so a data-sharded batch stays sharded."""
  b, p = prefix_mask_bs.shape
  r, t = mask_rtt.shape[:2]
  q, k, v = _qkv(x_bud, w, cfg, sin, cos)

  def split(x):
    return x[:, :p], x[:, p:].reshape(r, t, *x.shape[2:])

  (qp, qs), (kp, ks), (vp, vs) = split(q), split(k), split(v)
  attn_p = causal_attention(qp, kp, vp, prefix_mask_bpp)
  attn_s = grouped_attention(qs, kp, vp, ks, vs, prefix_mask_bs, mask_rtt)
  attn = jnp.concatenate([attn_p, attn_s.reshape(b, (r // b) * t, *attn_s.shape[2:])], axis=1)
  return _finish_block(x_bud, attn, w, cfg)


def read_slots(x_bksh, rows_bs):
  """x[rows[b, s], :, s] for every row b and slot s: each row's keys or
  values through a slot table (one gather of [B, K, S, H])."""
  _, k, s, _ = x_bksh.shape
  return x_bksh[rows_bs[:, None, :], jnp.arange(k)[None, :, None], jnp.arange(s)[None, None, :]]


def write_slots(buf_bs, x_bt, index, axis: int = 1):
  """`buf` with `x` written at slot `index` along `axis` (the slot axis of
  a [B, ...] buffer): one `dynamic_update_slice` for a shared int32[]
  index, one per row (a scatter) for an int32[B] index."""
  if index.ndim == 0:
    start = [0] * buf_bs.ndim
    start[axis] = index
    return jax.lax.dynamic_update_slice(buf_bs, x_bt, start)
  def one(buf, x, i):
    start = [0] * buf.ndim
    start[axis - 1] = i
    return jax.lax.dynamic_update_slice(buf, x, start)
  return jax.vmap(one)(buf_bs, x_bt, index)


def cached_block(x_btd, w, cache_k, cache_v, *, cfg: ModelConfig, sin, cos, mask_bts, index,
                 rows_bs=None):
  """One layer that writes its new keys/values into its cache [B, K, S, H].

  The cache is updated with `dynamic_update_slice` on the carried buffer, so
  XLA updates it in place instead of rebuilding it every step.
  index: the shared int32[] or per-row int32[B] slot of the first new token.
  rows_bs: the cache's slot table, or None (each row reads its own slots).
  """
  q, k, v = _qkv(x_btd, w, cfg, sin, cos)
  cache_k = write_slots(cache_k, k.transpose(0, 2, 1, 3).astype(cache_k.dtype), index, axis=2)
  cache_v = write_slots(cache_v, v.transpose(0, 2, 1, 3).astype(cache_v.dtype), index, axis=2)
  keys, values = cache_k, cache_v
  if rows_bs is not None:
    keys, values = read_slots(keys, rows_bs), read_slots(values, rows_bs)
  attn = head_major_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask_bts)
  return _finish_block(x_btd, attn, w, cfg), cache_k, cache_v


def default_positions(attention_mask_bt=None, segment_ids_bt=None, length=None):
  """Positions that restart per segment and skip padding.

  With left padding, `cumsum(mask) - 1` gives every real token the position
  it would have without padding.
  """
  if segment_ids_bt is not None:
    seg = segment_ids_bt
    start = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], 1)
    idx = jnp.arange(seg.shape[1])[None]
    seg_start = jax.lax.cummax(jnp.where(start, idx, 0), axis=1)
    return (idx - seg_start).astype(jnp.int32)
  if attention_mask_bt is not None:
    return jnp.maximum(jnp.cumsum(attention_mask_bt.astype(jnp.int32), axis=1) - 1, 0)
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None], (1, length))


# ---------------------------------------------------------------------------
# The NNX module.
# ---------------------------------------------------------------------------


# `ModelConfig.remat_policy` -> what `jax.checkpoint` saves of a layer.
_REMAT_POLICIES = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}


def _remat(step, cfg: ModelConfig):
  """The layer function, rematerialised in the backward when `cfg.remat`."""
  if not cfg.remat:
    return step
  return jax.checkpoint(step, policy=_REMAT_POLICIES[cfg.remat_policy])


def _param(rngs, shape, axes, dtype, init="normal"):
  if init == "normal":
    value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  return nnx.Param(value.astype(dtype), logical_axes=axes)


class Layers(nnx.Module):
  """All L layers' weights, stacked on a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    p = functools.partial(_param, rngs, dtype=cfg.param_dtype)
    self.attn_norm = p((L, D), ("layers", "norm"), init="ones")
    self.q = p((L, D, N, H), ("layers", "embed", "q_heads", "head_dim"))
    self.k = p((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"))
    self.v = p((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"))
    self.o = p((L, N, H, D), ("layers", "q_heads", "head_dim", "embed"))
    if cfg.attention_bias:
      self.q_bias = p((L, N, H), ("layers", "q_heads", "head_dim"), init="zeros")
      self.k_bias = p((L, K, H), ("layers", "kv_heads", "head_dim"), init="zeros")
      self.v_bias = p((L, K, H), ("layers", "kv_heads", "head_dim"), init="zeros")
    if cfg.qk_norm:
      self.q_norm = p((L, H), ("layers", "norm"), init="ones")
      self.k_norm = p((L, H), ("layers", "norm"), init="ones")
    self.mlp_norm = p((L, D), ("layers", "norm"), init="ones")
    self.gate = p((L, D, F), ("layers", "embed", "mlp"))
    self.up = p((L, D, F), ("layers", "embed", "mlp"))
    self.down = p((L, F, D), ("layers", "mlp", "embed"))
    # alpha / rank once models/_lora.py adds adapters (nnx.LoRAParam).
    self.lora_scale = 0.0

  def weights(self, dtype) -> dict[str, jax.Array]:
    """The stacked weights as plain arrays in the compute dtype (LoRA
    adapters included, B scaled by alpha / rank for `_proj`)."""
    w = {name: v[...].astype(dtype) for name, v in vars(self).items()
         if isinstance(v, nnx.Param)}
    return {name: x * self.lora_scale if name.endswith("_lora_b") else x
            for name, x in w.items()}


class Transformer(nnx.Module):
  """Decoder-only LM with an optional scalar head (reward model / critic)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    D, V = cfg.hidden_size, cfg.vocab_size
    p = functools.partial(_param, rngs, dtype=cfg.param_dtype)
    self.embed = p((V, D), ("vocab", "embed"))
    self.layers = Layers(cfg, rngs=rngs)
    self.final_norm = p((D,), ("norm",), init="ones")
    if cfg.lm_head and not cfg.tie_word_embeddings:
      self.lm_head = p((D, V), ("embed", "vocab"))
    if cfg.num_labels:
      self.score = p((D, cfg.num_labels), ("embed", None))

  # -- pieces -----------------------------------------------------------------

  @property
  def _dtype(self):
    return jnp.dtype(self.config.dtype)

  def _embed(self, tokens_bt):
    return jnp.take(self.embed[...], tokens_bt, axis=0).astype(self._dtype)

  def _sin_cos(self, positions_bt):
    return rope_sin_cos(positions_bt, rope_inv_freq(self.config.rope, self.config.head_dim))

  def logits(self, hidden_btd, head_vd=None):
    """LM logits from final hidden states.

    head_vd: `self.decode_head()`, the head as [V, D], made once by a decode
      loop. Then the logits of the few decode rows come as
      [V, D] @ [D, rows]: on XLA CPU that streams a [D, 32000] head ~1.5-2x
      faster than rows @ [D, V] at 16-64 rows. The barriers keep the dot and
      the transpose apart: XLA would fold the transpose back into the dot, or
      into the logits' consumers, which then read [V, rows] across its
      stride (a beam step's log-softmax took 14 ms that way at 64 rows).
    """
    if not self.config.lm_head:
      raise ValueError("this model has no LM head (it is a scalar-head model)")
    # One 2-D matmul over all B·T rows (see `_proj`): at [4096, 32000] the
    # 3-D einsum's backward transposed the logits' gradient for the weight's.
    rows = hidden_btd.reshape(-1, hidden_btd.shape[-1])
    if head_vd is not None:
      logits = jax.lax.optimization_barrier(jax.lax.optimization_barrier(head_vd @ rows.T).T)
    elif self.config.tie_word_embeddings:
      logits = rows @ self.embed[...].astype(self._dtype).T
    else:
      logits = rows @ self.lm_head[...].astype(self._dtype)
    return logits.reshape(*hidden_btd.shape[:-1], logits.shape[-1])

  def decode_head(self) -> jax.Array:
    """The LM head as [V, D] in the compute dtype, for `logits(h, head_vd)`.

    Tied models return the embedding as it is; otherwise this is a
    transposed copy, made once before a decode loop (like `layer_weights`).
    """
    if not self.config.lm_head:
      raise ValueError("this model has no LM head (it is a scalar-head model)")
    if self.config.tie_word_embeddings:
      return self.embed[...].astype(self._dtype)
    return self.lm_head[...].astype(self._dtype).T

  def head_weight(self) -> jax.Array:
    """The LM head as [D, V] in the parameter dtype (the embedding's
    transpose when tied), for losses that apply it themselves
    (`losses.chunked_token_logprobs` casts it per chunk, so the head's
    gradient is summed in the parameter dtype)."""
    if not self.config.lm_head:
      raise ValueError("this model has no LM head (it is a scalar-head model)")
    if self.config.tie_word_embeddings:
      return self.embed[...].T
    return self.lm_head[...]

  def values(self, hidden_btd):
    """Scalar head per token: [B, T] (num_labels 1) or [B, T, num_labels]."""
    if not self.config.num_labels:
      raise ValueError("this model has no scalar head; build it with num_labels=1")
    out = jnp.einsum("BTD,DC->BTC", hidden_btd.astype(jnp.float32),
                     self.score[...].astype(jnp.float32))
    return out[..., 0] if self.config.num_labels == 1 else out

  # -- full forward -------------------------------------------------------------

  def hidden_states(self, tokens_bt, *, positions=None, segment_ids=None,
                    attention_mask=None):
    """Final-normed hidden states [B, T, D] for the whole sequence.

    attention_mask: [B, T] 1 for real tokens (padding is never attended to).
    segment_ids: [B, T] packed documents; attention stays within a segment
      and positions restart per segment unless given.
    """
    cfg = self.config
    b, t = tokens_bt.shape
    if positions is None:
      positions = default_positions(attention_mask, segment_ids, t)
    positions = jnp.broadcast_to(positions, (b, t))
    idx = jnp.arange(t)
    mask = jnp.broadcast_to(idx[None, :, None] >= idx[None, None, :], (b, t, t))
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)[:, None, :]
    if segment_ids is not None:
      mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    sin, cos = self._sin_cos(positions)
    step = _remat(functools.partial(block, cfg=cfg, sin=sin, cos=cos, mask_bts=mask), cfg)

    def body(x, w):
      return step(x, w), None

    x, _ = jax.lax.scan(body, self._embed(tokens_bt), self.layers.weights(self._dtype))
    return rms_norm(x, self.final_norm[...].astype(self._dtype), cfg.rms_norm_eps)

  def grouped_hidden_states(self, prefix_bp, prefix_mask_bp, suffix_rt, suffix_mask_rt):
    """Hidden states of G = R / B continuations of each prefix, each prefix
    run once (a GRPO group's prompt, shared by its G completions).

    Equal to `hidden_states` on [repeat(prefix, G) ++ suffix] under the mask
    [repeat(prefix_mask, G) ++ suffix_mask], but the layers run on B·P + R·T
    positions instead of R·(P + T); in the backward the group's gradients
    through the shared prefix keys/values are summed.
    prefix: [B, P] left-padded (every row holds a real token);
    suffix: [R, T], continuation r of prefix r // G, real tokens first.
    Returns (prefix hidden [B, P, D], suffix hidden [R, T, D]), final-normed.
    """
    cfg = self.config
    (b, p), (r, t) = prefix_bp.shape, suffix_rt.shape
    if r % b:
      raise ValueError(f"{r} continuations do not split into groups of {b} prefixes")
    g = r // b
    pmask, smask = prefix_mask_bp.astype(bool), suffix_mask_rt.astype(bool)
    # The positions the concatenated rows get (integer work on [R, P + T]).
    prefix_pos = default_positions(pmask)
    suffix_pos = default_positions(
        jnp.concatenate([jnp.repeat(pmask, g, axis=0), smask], axis=1))[:, p:]
    causal_p = jnp.arange(p)[:, None] >= jnp.arange(p)[None]
    causal_t = jnp.arange(t)[:, None] >= jnp.arange(t)[None]
    per_prompt = lambda prefix, suffix: jnp.concatenate([prefix, suffix.reshape(b, g * t)], 1)
    sin, cos = self._sin_cos(per_prompt(prefix_pos, suffix_pos))
    step = functools.partial(grouped_block, cfg=cfg, sin=sin, cos=cos,
                             prefix_mask_bpp=causal_p[None] & pmask[:, None, :],
                             prefix_mask_bs=pmask, mask_rtt=causal_t[None] & smask[:, None, :])
    step = _remat(step, cfg)
    x = self._embed(per_prompt(prefix_bp, suffix_rt))                  # [B, P + G·T, D]
    # Unrolled, each layer on its own weights: on the bench model the scan's
    # per-layer slicing and stacking cost ~15% of the layers' forward +
    # backward (4.5 -> 3.9 s); compile time grows with depth instead.
    for w in self.layer_weights():
      x = step(x, w)
    x = rms_norm(x, self.final_norm[...].astype(self._dtype), cfg.rms_norm_eps)
    d = x.shape[-1]
    return x[:, :p], x[:, p:].reshape(r, t, d)

  def __call__(self, tokens_bt, *, positions=None, segment_ids=None,
               attention_mask=None):
    """LM logits [B, T, V] (compute dtype; losses upcast to float32)."""
    return self.logits(self.hidden_states(
        tokens_bt, positions=positions, segment_ids=segment_ids,
        attention_mask=attention_mask))

  # -- cached forward (prefill and decode) -------------------------------------

  def layer_weights(self) -> list[dict[str, jax.Array]]:
    """Each layer's weights as separate arrays (compute dtype).

    Split once, outside a decode loop: there, slicing layer l out of the
    stacked [L, ...] weights (a scan over layers) copied every layer's
    weights on every step, ~20% of a batch-16 decode step on CPU. The
    split is a copy: while a caller holds it, a second set of layer weights
    is alive (memory to budget for on an accelerator).
    """
    w = self.layers.weights(self._dtype)
    return [{name: x[l] for name, x in w.items()} for l in range(self.config.num_layers)]

  def forward_cached(self, tokens_bt, positions_bt, token_mask_bt, cache: KVCache,
                     layer_weights=None):
    """Write T tokens at `cache.index` and attend over the cache.

    Returns (final hidden states [B, T, D], updated cache). Query t sits in
    slot index + t and sees slots <= its own that hold real tokens (index
    is shared, int32[], or per row, int32[B]).
    layer_weights: `self.layer_weights()`, split once by a caller that runs
      this in a loop (the sampler); split here otherwise. The layers run
      unrolled, each on its own weights.
    """
    cfg = self.config
    t = tokens_bt.shape[1]
    index = cache.index
    kv_mask = write_slots(cache.mask, token_mask_bt.astype(bool), index)
    slots = jnp.arange(cache.max_length)
    query_slots = jnp.reshape(index, (-1, 1)) + jnp.arange(t)            # [1 or B, T]
    causal = slots[None, None, :] <= query_slots[:, :, None]              # [1 or B, T, S]
    mask = causal & kv_mask[:, None, :]                                  # [B, T, S]
    sin, cos = self._sin_cos(positions_bt)
    rows = cache.rows
    if rows is not None:
      assert index.ndim == 0, "a slot table needs a shared write index"
      # The new slots live in each row's own storage.
      rows = jax.lax.dynamic_update_slice(rows, _own_rows(rows.shape[0], t), (0, index))
    x, ks, vs = self._embed(tokens_bt), [], []
    weights = self.layer_weights() if layer_weights is None else layer_weights
    for w, k, v in zip(weights, cache.k, cache.v):
      x, k, v = cached_block(x, w, k, v, cfg=cfg, sin=sin, cos=cos, mask_bts=mask, index=index,
                             rows_bs=rows)
      ks.append(k)
      vs.append(v)
    hidden = rms_norm(x, self.final_norm[...].astype(self._dtype), cfg.rms_norm_eps)
    return hidden, KVCache(k=tuple(ks), v=tuple(vs), mask=kv_mask, index=index + t, rows=rows)

  def init_cache(self, batch: int, max_length: int, dtype=None) -> KVCache:
    return init_cache(self.config, batch, max_length, dtype)


def create(cfg: ModelConfig, seed: int = 0) -> Transformer:
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def create_abstract(cfg: ModelConfig) -> Transformer:
  """The model with `ShapeDtypeStruct` leaves: nothing is allocated."""
  return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
