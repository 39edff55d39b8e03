"""The decode loop: prefill once, then `lax.while_loop` over a fixed buffer.

`sample_loop` is a pure, jittable function of the model and arrays, so a
jitted training step (GRPO, PPO) can call it inside its own program; the
host-side `generate` is only validation, bucketing and a jit around it.

With an environment (`rankjax.envs`) the loop runs multi-turn episodes in
the same buffer: when a row ends its turn (a turn-end token sequence or the
turn's token budget) the environment steps for the rows whose turn ended
(inside `lax.cond`, so steps where no turn ends skip it), and its
observation tokens enter the row's KV cache in place while the other rows
keep sampling, in one of two ways (`envs.Limits.observations`):

* "forced": one token per decode step, through the same forward as sampled
  tokens (the row spends a decode step per observation token);
* "prefill": the whole observation as one chunk, one forward of every row
  over up to O tokens (under `lax.switch`) at the step the environment
  answered; each row writes its own cache slots (a per-row cache index).

Both give the same transcripts and log-probs (greedy: the same tokens); the
`bench grpo --env` benchmark times them. Every row keeps its own column in
the completion buffer (`SampleOutput.lengths`), and its cache slot is the
prompt width plus that column. `SampleOutput.generated` tells the model's
tokens from the environment's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from rankjax.envs import Environment
from rankjax.models import KVCache, Transformer, default_positions, write_slots
from rankjax.sampling._processors import RowParams, sample_tokens


@struct.dataclass
class SampleOutput:
  """R = B * num_samples rows; row r continues prompt r // num_samples.

  tokens:            i32[R, N] completion tokens, `pad_id` after the end.
  lengths:           i32[R] tokens generated, the EOS included.
  finished:          bool[R] the row ended with an EOS (not truncated).
  logprobs:          f32[R, N] log-prob of each token under the model at the
                     row's sampling temperature, unfiltered: log-softmax(logits / T)
                     (T = 1 for greedy rows). PPO/GRPO's π_old; the trainer
                     computes π at the same T (TRL's semantics).
  sampling_logprobs: f32[R, N] log-prob under the processed distribution
                     actually sampled from (0 for greedy rows).
  generated:         bool[R, N] the model wrote the token (False for pad and
                     for environment observations, whose log-probs are 0).
  turns:             i32[R] environment steps the row took.
  env_reward:        f32[R] the environment's rewards, summed over turns.
  turn_rewards:      f32[R, N] each turn's reward at its turn-ending token.
  env_errors:        i32[R] turns the environment reported as errors.
  """
  tokens: jax.Array
  lengths: jax.Array
  finished: jax.Array
  logprobs: jax.Array
  sampling_logprobs: jax.Array
  generated: jax.Array
  turns: jax.Array
  env_reward: jax.Array
  turn_rewards: jax.Array
  env_errors: jax.Array

  @property
  def mask(self) -> jax.Array:
    """bool[R, N]: real completion tokens."""
    return jnp.arange(self.tokens.shape[1])[None] < self.lengths[:, None]


@struct.dataclass
class _State:
  step: jax.Array           # i32[]: decode steps taken (the rng stream's index)
  last: jax.Array           # i32[R]: the row's newest token, not yet in the cache
  done: jax.Array           # bool[R]
  out: SampleOutput         # out.lengths: each row's next column
  cache: KVCache
  seen: jax.Array | None    # bool[R, V] when a repetition penalty is on
  rng: jax.Array
  env: "_EnvState | None" = None


@struct.dataclass
class _EnvState:
  state: object             # the environment's own pytree
  obs: jax.Array            # i32[R, O] the row's pending observation
  obs_len: jax.Array        # i32[R]
  obs_pos: jax.Array        # i32[R] next observation token to force
  turn_start: jax.Array     # i32[R] column where the model's turn began


def _repeat_cache(cache: KVCache, n: int) -> KVCache:
  # Inside the graph: each prompt is prefilled once and its keys/values are
  # broadcast to its n samples (the GRPO group).
  assert cache.rows is None, "repeat a cache before giving it a slot table"
  return KVCache(k=tuple(jnp.repeat(x, n, axis=0) for x in cache.k),
                 v=tuple(jnp.repeat(x, n, axis=0) for x in cache.v),
                 mask=jnp.repeat(cache.mask, n, axis=0), index=cache.index)


def _grow_cache(cache: KVCache, extra: int) -> KVCache:
  """`cache` with `extra` empty slots after its last."""
  pad = lambda x: jnp.pad(x, [(0, 0)] * 2 + [(0, extra)] + [(0, 0)] * (x.ndim - 3))
  return cache.replace(k=tuple(map(pad, cache.k)), v=tuple(map(pad, cache.v)),
                       mask=jnp.pad(cache.mask, [(0, 0), (0, extra)]))


def _is_eos(tokens, eos_ids):
  if not eos_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.any(tokens[:, None] == jnp.asarray(eos_ids, jnp.int32)[None], axis=-1)


def _record(state: _State, tokens, raw_lp, proc_lp, params, eos_ids, pad_id, forced=None):
  """Write one token per running row at its column; update done/lengths.
  `forced` rows wrote an observation token (no log-prob, never an EOS)."""
  live = ~state.done
  wrote = live if forced is None else live & ~forced
  tokens = jnp.where(live, tokens, pad_id)
  out = state.out
  r = jnp.arange(tokens.shape[0])
  col = jnp.where(live, out.lengths, out.tokens.shape[1])   # stopped rows: dropped

  def put(buf, x):
    return buf.at[r, col].set(x, mode="drop")

  out = out.replace(
      tokens=put(out.tokens, tokens),
      logprobs=put(out.logprobs, jnp.where(wrote, raw_lp, 0.0)),
      sampling_logprobs=put(out.sampling_logprobs, jnp.where(wrote, proc_lp, 0.0)),
      generated=put(out.generated, wrote),
      lengths=out.lengths + live.astype(jnp.int32),
      finished=out.finished | (wrote & _is_eos(tokens, eos_ids)))
  done = state.done | out.finished | (out.lengths >= params.max_new_tokens)
  seen = state.seen
  if seen is not None:
    seen = seen.at[r, tokens].set(True)
  return state.replace(last=tokens, done=done, out=out, seen=seen)


def _forced_tokens(es: _EnvState):
  """The observation token each row forces this step, and which rows do."""
  forcing = es.obs_pos < es.obs_len
  pos = jnp.clip(es.obs_pos, 0, es.obs.shape[1] - 1)
  return jnp.take_along_axis(es.obs, pos[:, None], axis=1)[:, 0], forcing


def _turn_ended(out: SampleOutput, turn_start, turn_ends):
  """bool[R]: the tokens ending at each row's newest column are a turn-end
  sequence the model wrote in its current turn."""
  hit = jnp.zeros(out.tokens.shape[:1], bool)
  last_col = out.lengths - 1
  for ids in turn_ends:
    k = len(ids)
    start = last_col - k + 1
    cols = jnp.clip(start[:, None] + jnp.arange(k), 0, out.tokens.shape[1] - 1)
    window = jnp.take_along_axis(out.tokens, cols, axis=1)
    gen = jnp.take_along_axis(out.generated, cols, axis=1)
    hit |= ((start >= 0) & (start >= turn_start)
            & jnp.all((window == jnp.asarray(ids, jnp.int32)[None]) & gen, axis=1))
  return hit


def _env_turn(state: _State, before: _State, forced, env: Environment, params) -> _State:
  """After a decode step: advance forced observations; step the environment
  for the rows whose turn just ended; stop rows past `max_turns`. A
  turn-end sequence that is also an EOS (Llama 3's <|eom_id|>) ends the
  turn, not the episode."""
  es, lim = state.env, env.limits
  lengths = state.out.lengths
  was_live = ~before.done
  obs_pos = es.obs_pos + (was_live & forced).astype(jnp.int32)
  # The model's next turn begins after the observation's last token.
  turn_start = jnp.where(was_live & forced & (obs_pos == es.obs_len), lengths, es.turn_start)
  wrote = was_live & ~forced
  ends = _turn_ended(state.out, turn_start, env.turn_ends)
  if lim.turn_max_tokens:
    ends |= lengths - turn_start >= lim.turn_max_tokens
  out = state.out.replace(finished=jnp.where(wrote & ends, before.out.finished,
                                             state.out.finished))
  full = lengths >= params.max_new_tokens
  state = state.replace(out=out, done=before.done | out.finished | full)
  trigger = wrote & ends & ~state.done
  over = trigger & (out.turns >= lim.max_turns)
  call = trigger & ~over
  i = jnp.arange(out.tokens.shape[1])
  turn_mask = (i[None] >= turn_start[:, None]) & (i[None] < lengths[:, None]) & out.generated

  def step(args):
    env_state, out = args
    new_state, ob = env.step(env_state, out.tokens, turn_mask, call)
    length = jnp.sum(ob.mask, axis=1).astype(jnp.int32)
    return new_state, ob.tokens, length, ob.reward, ob.done, ob.error

  def skip(args):
    env_state, out = args
    rows, width = out.tokens.shape[0], es.obs.shape[1]
    return (env_state, jnp.zeros((rows, width), jnp.int32), jnp.zeros((rows,), jnp.int32),
            jnp.zeros((rows,), jnp.float32), jnp.zeros((rows,), bool), jnp.zeros((rows,), bool))

  env_state, obs, obs_len, reward, done, error = jax.lax.cond(
      jnp.any(call), step, skip, (es.state, out))
  reward = jnp.where(call, reward, 0.0)
  r = jnp.arange(out.tokens.shape[0])
  out = out.replace(turns=out.turns + call.astype(jnp.int32),
                    env_reward=out.env_reward + reward,
                    turn_rewards=out.turn_rewards.at[r, lengths - 1].add(reward, mode="drop"),
                    env_errors=out.env_errors + (call & error).astype(jnp.int32),
                    finished=out.finished | (call & done))
  es = _EnvState(state=env_state, obs=jnp.where(call[:, None], obs, es.obs),
                 obs_len=jnp.where(call, obs_len, es.obs_len),
                 obs_pos=jnp.where(call, 0, obs_pos),
                 turn_start=jnp.where(call, lengths, turn_start))
  return state.replace(env=es, out=out, done=state.done | over | (call & done))


def _prefill_observations(state: _State, forward, params) -> _State:
  """Write every row's pending observation in one chunk: the cache takes the
  row's newest token and the observation but its last token, [last, o_0, ..,
  o_{L-2}], in one forward of all rows (under `lax.switch`: skipped when
  no row has one), and o_{L-1} becomes the row's newest token, so the next decode
  step samples the model's reply. An observation past the row's token
  budget is cut there and the row stops (as when forced)."""
  es, out = state.env, state.out
  rows, width = es.obs.shape
  n = out.tokens.shape[1]
  pending = (es.obs_pos < es.obs_len) & ~state.done
  take = jnp.where(pending, jnp.minimum(es.obs_len, params.max_new_tokens - out.lengths), 0)
  j = jnp.arange(width)
  chunk = jnp.concatenate([state.last[:, None], es.obs[:, :-1]], axis=1)
  mask = pending[:, None] & (j[None] < es.obs_len[:, None])
  # The chunk is as wide as the longest pending observation needs, rounded
  # up to O/4, O/2 or O (its forward costs rows x width tokens); branch 0:
  # no row has one.
  widths = sorted({max(1, width // 4), max(1, width // 2), width})
  need = jnp.max(jnp.where(pending, es.obs_len, 0))
  branch = jnp.where(jnp.any(pending),
                     1 + jnp.searchsorted(jnp.asarray(widths), need), 0)

  # The branches only read the cache and return the chunk's keys/values
  # [R, K, O, H] per layer; they are written below, in place, at every step
  # (rows without an observation write masked slots that later tokens
  # overwrite). A branch that returned the updated cache made XLA copy the
  # whole cache at every step.
  start = state.cache.index                    # each row's newest-token slot

  def new_slots(w):
    def run(cache):
      written = forward(chunk[:, :w], out.lengths - 1, mask[:, :w], cache)
      grab = lambda x: jnp.pad(
          jax.vmap(lambda c, i: jax.lax.dynamic_slice_in_dim(c, i, w, axis=1))(x, start),
          [(0, 0), (0, 0), (0, width - w), (0, 0)])
      return tuple(map(grab, written.k)), tuple(map(grab, written.v))
    return run

  def nothing(cache):
    zeros = lambda x: jnp.zeros(x.shape[:2] + (width,) + x.shape[3:], x.dtype)
    return tuple(map(zeros, cache.k)), tuple(map(zeros, cache.v))

  ks, vs = jax.lax.switch(branch, [nothing] + [new_slots(w) for w in widths], state.cache)
  put = lambda x, new: write_slots(x, new, start, axis=2)
  cache = state.cache.replace(k=tuple(map(put, state.cache.k, ks)),
                              v=tuple(map(put, state.cache.v, vs)),
                              mask=write_slots(state.cache.mask, mask, start))
  r = jnp.arange(rows)
  cols = jnp.where(j[None] < take[:, None], out.lengths[:, None] + j[None], n)
  out = out.replace(tokens=out.tokens.at[r[:, None], cols].set(es.obs, mode="drop"),
                    lengths=out.lengths + take)
  newest = jnp.take_along_axis(es.obs, jnp.maximum(take - 1, 0)[:, None], axis=1)[:, 0]
  seen = state.seen
  if seen is not None:
    seen = seen.at[r[:, None], es.obs].max(j[None] < take[:, None])
  es = es.replace(obs_pos=jnp.where(pending, es.obs_len, es.obs_pos),
                  turn_start=jnp.where(pending, out.lengths, es.turn_start))
  return state.replace(
      last=jnp.where(pending, newest, state.last), out=out, env=es, cache=cache, seen=seen,
      done=state.done | (pending & (out.lengths >= params.max_new_tokens)))


def sample_loop(model: Transformer, prompt_tokens_bp, prompt_mask_bp,
                params: RowParams, rng, *, num_samples: int, max_new_tokens: int,
                eos_ids: tuple[int, ...], pad_id: int = 0,
                repetition_penalty: bool = False, env: Environment | None = None,
                extras=None) -> SampleOutput:
  """Sample `num_samples` completions for each left-padded prompt.

  prompt_tokens_bp / prompt_mask_bp: [B, P], left-padded (real tokens at the
    end, so every row's next token goes into the same cache slot).
  params: per-row parameters for R = B * num_samples rows.
  max_new_tokens: the static buffer length N (rows stop earlier through
    `params.max_new_tokens`).
  repetition_penalty: static switch for the [R, V] seen-token mask.
  env: a multi-turn environment (`rankjax.envs.Environment`); None = one
    turn. max_new_tokens then caps all of a row's tokens, the model's and
    the environment's together.
  extras: per-prompt arrays [B, ...] the environment's `reset` reads
    (repeated for each of the prompt's samples). How observations enter
    the cache is the environment's `limits.observations`.
  """
  b, p = prompt_tokens_bp.shape
  g, n = num_samples, max_new_tokens
  rows = b * g
  mask = prompt_mask_bp.astype(bool)
  positions = default_positions(mask)
  # Split once: the decode loop reads each layer's weights in place, and the
  # LM head in the layout that few-row matmuls stream fastest.
  weights, head = model.layer_weights(), model.decode_head()
  # The prompt is prefilled in a cache of its own length (its attention
  # scores are [B, N, P, P], not [B, N, P, P + N]), then the cache grows by
  # the completion buffer; an observation chunk is written from a row's
  # newest column, so O more slots keep it from being clamped.
  hidden, cache = model.forward_cached(prompt_tokens_bp, positions, mask,
                                       model.init_cache(b, p), weights)
  width = env.limits.max_observation_tokens if env is not None else 0
  cache = _grow_cache(cache, n + width)
  logits = jnp.repeat(model.logits(hidden[:, -1:], head)[:, 0], g, axis=0)
  cache = _repeat_cache(cache, g)
  if env is not None:
    cache = cache.replace(index=jnp.full((rows,), p, jnp.int32))   # a slot per row
  next_pos = jnp.repeat(positions[:, -1] + 1, g)

  seen = None
  if repetition_penalty:
    seen = jnp.zeros((b, logits.shape[-1]), bool)
    seen = seen.at[jnp.arange(b)[:, None], prompt_tokens_bp].max(mask)
    seen = jnp.repeat(seen, g, axis=0)
  zeros = jnp.zeros((rows, n), jnp.float32)
  counts = jnp.zeros(rows, jnp.int32)
  out = SampleOutput(tokens=jnp.full((rows, n), pad_id, jnp.int32),
                     lengths=counts, finished=jnp.zeros(rows, bool),
                     logprobs=zeros, sampling_logprobs=zeros,
                     generated=jnp.zeros((rows, n), bool), turns=counts,
                     env_reward=jnp.zeros(rows, jnp.float32), turn_rewards=zeros,
                     env_errors=counts)
  env_state = None
  if env is not None:
    per_row = {k: jnp.repeat(v, g, axis=0) for k, v in (extras or {}).items()}
    env_state = _EnvState(state=env.reset(per_row), obs=jnp.zeros((rows, width), jnp.int32),
                          obs_len=counts, obs_pos=counts, turn_start=counts)
  state = _State(step=jnp.ones((), jnp.int32), last=jnp.zeros(rows, jnp.int32),
                 done=jnp.zeros(rows, bool), out=out, cache=cache, seen=seen, rng=rng,
                 env=env_state)

  def forward(tokens, cols, mask, cache):
    """Tokens [R, T] from each row's column `cols` on: the row's positions
    and (with an environment) its own cache slots, prompt width + column."""
    pos = (next_pos + cols)[:, None] + jnp.arange(tokens.shape[1])
    if env is not None:
      cache = cache.replace(index=p + cols)
    return model.forward_cached(tokens, pos, mask, cache, weights)

  def sample(state, logits, t):
    tok, raw_lp, proc_lp = sample_tokens(jax.random.fold_in(state.rng, t), logits,
                                         state.seen, params)
    if env is None:
      return _record(state, tok, raw_lp, proc_lp, params, eos_ids, pad_id)
    forced_tok, forced = _forced_tokens(state.env)
    tok = jnp.where(forced, forced_tok, tok)
    after = _record(state, tok, raw_lp, proc_lp, params, eos_ids, pad_id, forced)
    after = _env_turn(after, state, forced, env, params)
    if env.limits.observations == "prefill":
      after = _prefill_observations(
          after, lambda *a: forward(*a)[1], params)
    return after

  state = sample(state, logits, 0)

  def cond(state):
    return (state.step < n) & ~jnp.all(state.done)

  def body(state):
    hidden, cache = forward(state.last[:, None], state.out.lengths - 1,
                            jnp.ones((rows, 1), bool), state.cache)
    logits = model.logits(hidden, head)[:, 0]
    state = sample(state.replace(cache=cache), logits, state.step)
    return state.replace(step=state.step + 1)

  state = jax.lax.while_loop(cond, body, state)
  return state.out
