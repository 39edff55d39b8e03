"""One pure train step per algorithm: `(state, batch) -> (state, metrics)`.

Each `*_step` checks its batch, picks its reference, and hands a loss
function `(model, micro_batch) -> (loss, metrics)` to `update`, the shared
grad + optimizer update + non-finite guard. Jit each step ONCE at the call
site with explicit shardings and `donate_argnums=0` (see `_loop.jit_step`);
hyper-parameters are bound with `functools.partial` before jit.

Batches follow `rankjax.data` (all int32, [B, T]):
  sft, kto        tokens, loss_mask[, segment_ids, positions] (+ label [B] for kto)
  rm, dpo         chosen_{tokens,loss_mask,...}, rejected_{...} (+ margin [B])
  listwise        tokens, loss_mask[, ...] [B, K, T], scores, list_mask [B, K]
                  (or a dpo batch: lists of two)
`loss_mask[b, t]` marks token t as a target, predicted from position t-1.
Optional precomputed reference log-probs (float32[B]): `ref_chosen_logps`,
`ref_rejected_logps` (dpo), `ref_logps`, `ref_kl_logps` (kto); when present
they are used and no reference forward runs.

Gradient accumulation is a `lax.scan` over micro-batches inside the step
(rather than `optax.MultiSteps` across calls): one call is one optimizer
update, so the schedule, the step counter and the non-finite guard all see
whole updates, the guard judges the accumulated gradient, and there is no
per-micro-batch host round trip. Per-micro-batch metrics are averaged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from rankjax import data, losses
from rankjax.config import DPOCfg, KTOCfg, ListwiseCfg, RMCfg, SFTCfg
from rankjax.train._optim import global_norm
from rankjax.train._state import TrainState


Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]

_SEQ = ("tokens", "loss_mask", "segment_ids", "positions")
_REQUIRED = ("tokens", "loss_mask")


# ---------------------------------------------------------------------------
# Batch checks (trace time: shapes are static, so errors are immediate).
# ---------------------------------------------------------------------------


def check_batch(batch: Batch, prefixes: tuple[str, ...] = ("",),
                per_row: tuple[str, ...] = (), accum_steps: int = 1) -> None:
  """Raises ValueError naming the key unless every sequence array has one
  [B, T] shape and every per-row array has shape [B]."""
  missing = [p + k for p in prefixes for k in _REQUIRED if p + k not in batch]
  missing += [k for k in per_row if k not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; it has {sorted(batch)}")
  shapes = {p + k: tuple(batch[p + k].shape) for p in prefixes for k in _SEQ
            if p + k in batch}
  first = next(iter(shapes.values()))
  if len(first) != 2 or any(s != first for s in shapes.values()):
    listing = ", ".join(f"{k}={s}" for k, s in shapes.items())
    raise ValueError(f"batch sequence arrays must all be [B, T] with one "
                     f"shape; got {listing}")
  rows = {k: tuple(batch[k].shape) for k in (*per_row, "margin") if k in batch}
  rows.update({k: tuple(v.shape) for k, v in batch.items() if k.startswith("ref_")})
  bad = {k: s for k, s in rows.items() if s != first[:1]}
  if bad:
    raise ValueError(f"per-example arrays must be [B] = {first[:1]}; got {bad}")
  if first[0] % accum_steps:
    raise ValueError(f"batch size {first[0]} is not divisible by "
                     f"grad_accum_steps={accum_steps}")


# ---------------------------------------------------------------------------
# Shared pieces.
# ---------------------------------------------------------------------------


def next_token_hidden(model, batch: Batch, prefix: str = ""):
  """Final hidden states [B, T-1, D] at positions 0..T-2, predicting tokens
  1..T-1 (cut before the LM head, so no [B, T, V] logits are sliced)."""
  hidden_btd = model.hidden_states(batch[prefix + "tokens"],
                                   positions=batch.get(prefix + "positions"),
                                   segment_ids=batch.get(prefix + "segment_ids"))
  return hidden_btd[:, :-1]


def next_token_logits(model, batch: Batch, prefix: str = ""):
  """Logits [B, T-1, V] at positions 0..T-2, predicting tokens 1..T-1
  (the steps themselves go through `head_logprobs`, which never builds them)."""
  return model.logits(next_token_hidden(model, batch, prefix))


def head_logprobs(model, hidden_btd, targets_bt, temperature=1.0):
  """log p(targets) [B, T] (float32) through the model's LM head at
  `temperature`, `model.config.logits_chunk` tokens at a time
  (`losses.chunked_token_logprobs`; 0 = unchunked)."""
  return losses.chunked_token_logprobs(hidden_btd, model.head_weight(), targets_bt,
                                       chunk_size=model.config.logits_chunk,
                                       temperature=temperature)


def concat_pair(batch: Batch) -> dict[str, jax.Array]:
  """chosen_* and rejected_* stacked into one [2B, T] batch (one forward
  instead of two: the weights are read once)."""
  return {k: jnp.concatenate([batch["chosen_" + k], batch["rejected_" + k]])
          for k in _SEQ if "chosen_" + k in batch}


def sequence_logps(model, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(Σ_t log p(target_t), number of targets) per row: float32[B] each."""
  logp_bt = head_logprobs(model, next_token_hidden(model, batch), batch["tokens"][:, 1:])
  mask_bt = batch["loss_mask"][:, 1:]
  return (losses.sequence_logprobs(logp_bt, mask_bt),
          jnp.sum(mask_bt != 0, axis=-1).astype(jnp.float32))


def target_metrics(mask_bt: jax.Array) -> dict[str, jax.Array]:
  """Warning metrics: a batch, or rows, with nothing to learn from."""
  per_row = jnp.sum(mask_bt[:, 1:] != 0, axis=-1)
  return {"num_target_tokens": jnp.sum(per_row).astype(jnp.float32),
          "zero_target_batch": jnp.all(per_row == 0).astype(jnp.float32),
          "zero_target_rows": jnp.sum(per_row == 0).astype(jnp.float32)}


def _micro_batches(batch: Batch, n: int) -> Batch:
  # Row r = b·n + a goes to micro-batch a: each device's contiguous block of
  # rows feeds every micro-batch, so the scan needs no resharding.
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1),
      batch)


def compute_grads(state: TrainState, batch: Batch, loss_fn: LossFn,
                  accum_steps: int = 1):
  """(loss, metrics, grads) of `loss_fn`, averaged over `accum_steps`
  micro-batches scanned in order."""
  def one(mb):
    def f(params):
      return loss_fn(state.model(params), mb)
    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(state.params)
    return loss, metrics, grads

  if accum_steps == 1:
    return one(batch)

  def body(acc, mb):
    return jax.tree.map(jnp.add, acc, one(mb)), None

  micro = _micro_batches(batch, accum_steps)
  shapes = jax.eval_shape(one, jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros, micro)
  return jax.tree.map(lambda x: x / accum_steps, total)


def apply_grads(state: TrainState, loss, metrics, grads, skip=False):
  """Optimizer update, skipped when the loss or any gradient is NaN/Inf
  (`nonfinite` = 1) or when the caller says so (`skip`, e.g. no reward
  applied to any sample): params and optimizer state then stay as they
  were and the step still counts. The state never holds a non-finite value."""
  grad_norm = global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  ok = finite & ~jnp.asarray(skip)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = state.replace(
      params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
      step=state.step + 1, rng=jax.random.split(state.rng)[0])
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                 nonfinite=1.0 - finite.astype(jnp.float32))
  return new_state, metrics


def update(state: TrainState, batch: Batch, loss_fn: LossFn, accum_steps: int = 1):
  loss, metrics, grads = compute_grads(state, batch, loss_fn, accum_steps)
  return apply_grads(state, loss, metrics, grads)


def eval_step(state: TrainState, batch: Batch, *, objective, hp=None):
  """Metrics of an objective's loss on a batch, no update (jit it with the
  step's shardings and no donation)."""
  loss, metrics = objective(state, batch, hp)(state.model(), batch)
  return dict(metrics, loss=loss)


# ---------------------------------------------------------------------------
# SFT.
# ---------------------------------------------------------------------------


def sft_loss_fn(model, batch: Batch, *, unlikelihood_alpha: float = 0.0):
  """`losses.sft_loss` (masked next-token cross entropy, token mean) on the
  batch's targets; `losses.token_unlikelihood_loss` when alpha > 0. Both
  run the LM head `model.config.logits_chunk` tokens at a time (their
  `chunked_*` forms; 0 = unchunked)."""
  hidden_btd = next_token_hidden(model, batch)
  targets_bt, mask_bt = batch["tokens"][:, 1:], batch["loss_mask"][:, 1:]
  head_dv, chunk = model.head_weight(), model.config.logits_chunk
  if unlikelihood_alpha:
    loss, metrics = losses.chunked_token_unlikelihood_loss(
        hidden_btd, head_dv, targets_bt, mask_bt, alpha=unlikelihood_alpha, chunk_size=chunk)
  else:
    loss, metrics = losses.chunked_sft_loss(hidden_btd, head_dv, targets_bt, mask_bt,
                                            chunk_size=chunk)
  return loss, {**metrics, **target_metrics(batch["loss_mask"])}


def sft_objective(state: TrainState, batch: Batch, hp: SFTCfg | None = None, *,
                  accum_steps: int = 1) -> LossFn:
  hp = hp or SFTCfg()
  check_batch(batch, accum_steps=accum_steps)
  return functools.partial(sft_loss_fn, unlikelihood_alpha=hp.unlikelihood_alpha)


def sft_step(state: TrainState, batch: Batch, *, hp: SFTCfg | None = None,
             accum_steps: int = 1):
  return update(state, batch, sft_objective(state, batch, hp, accum_steps=accum_steps),
                accum_steps)


# ---------------------------------------------------------------------------
# Reward model.
# ---------------------------------------------------------------------------


def last_target_index(mask_bt: jax.Array) -> jax.Array:
  """Index of each row's last target token (the completion's EOS)."""
  t = mask_bt.shape[1]
  return t - 1 - jnp.argmax(jnp.flip(mask_bt != 0, axis=1), axis=1)


def rm_loss_fn(model, batch: Batch, *, center_coef: float = 0.0):
  """Bradley-Terry on the scalar head at each completion's last token."""
  pair = concat_pair(batch)
  hidden_btd = model.hidden_states(pair["tokens"], positions=pair.get("positions"),
                                   segment_ids=pair.get("segment_ids"))  # no LM head
  last_b = last_target_index(pair["loss_mask"])
  h_bd = jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)
  rewards_b = model.values(h_bd)[:, 0]
  r_chosen, r_rejected = jnp.split(rewards_b, 2)
  loss, metrics = losses.reward_model_loss(
      r_chosen, r_rejected, margin_b=batch.get("margin"), center_coef=center_coef)
  return loss, {**metrics, **target_metrics(pair["loss_mask"])}


def rm_objective(state: TrainState, batch: Batch, hp: RMCfg | None = None, *,
                 accum_steps: int = 1) -> LossFn:
  hp = hp or RMCfg()
  check_batch(batch, ("chosen_", "rejected_"), accum_steps=accum_steps)
  return functools.partial(rm_loss_fn, center_coef=hp.center_coef)


def rm_step(state: TrainState, batch: Batch, *, hp: RMCfg | None = None, accum_steps: int = 1):
  return update(state, batch, rm_objective(state, batch, hp, accum_steps=accum_steps),
                accum_steps)


# ---------------------------------------------------------------------------
# DPO.
# ---------------------------------------------------------------------------


def dpo_reference_free(hp: DPOCfg) -> bool:
  """No reference model: `reference_free`, or only reference-free types
  (SimPO, CPO, ORPO)."""
  return _no_reference(hp.reference_free, hp.loss_type)


def _no_reference(reference_free: bool, loss_type) -> bool:
  return reference_free or all(t in losses.REFERENCE_FREE_LOSS_TYPES for t in loss_type)


def dpo_loss_fn(model, batch: Batch, *, ref_model=None, beta: float = 0.1,
                loss_type=("sigmoid",), loss_weights=None,
                label_smoothing: float = 0.0, reference_free: bool = False,
                sft_weight: float = 0.0, simpo_gamma: float = 0.5):
  """DPO (and variants) on one forward over chosen ++ rejected."""
  pair = concat_pair(batch)
  logps_b, lengths_b = sequence_logps(model, pair)
  if _no_reference(reference_free, loss_type):
    ref_c = ref_r = None
  elif ref_model is None:
    ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
  else:
    ref_c, ref_r = jnp.split(jax.lax.stop_gradient(sequence_logps(ref_model, pair)[0]), 2)
  (pc, pr), (lc, lr) = jnp.split(logps_b, 2), jnp.split(lengths_b, 2)
  loss, metrics = losses.dpo_loss(
      pc, pr, ref_c, ref_r, beta=beta, loss_type=loss_type,
      loss_weights=loss_weights or None, label_smoothing=label_smoothing,
      chosen_lengths=lc, rejected_lengths=lr, reference_free=reference_free,
      sft_weight=sft_weight, simpo_gamma=simpo_gamma)
  return loss, {**metrics, **target_metrics(pair["loss_mask"])}


def dpo_objective(state: TrainState, batch: Batch, hp: DPOCfg | None = None, *,
                  accum_steps: int = 1) -> LossFn:
  """The DPO loss with its reference: cached log-probs in the batch when
  present, none when reference-free, else the frozen reference model."""
  hp = hp or DPOCfg()
  check_batch(batch, ("chosen_", "rejected_"), accum_steps=accum_steps)
  cached = "ref_chosen_logps" in batch and "ref_rejected_logps" in batch
  ref = None if cached or dpo_reference_free(hp) else state.ref_model()
  return functools.partial(
      dpo_loss_fn, ref_model=ref, beta=hp.beta, loss_type=hp.loss_type,
      loss_weights=hp.loss_weights, label_smoothing=hp.label_smoothing,
      reference_free=hp.reference_free, sft_weight=hp.sft_weight, simpo_gamma=hp.simpo_gamma)


def dpo_step(state: TrainState, batch: Batch, *, hp: DPOCfg | None = None,
             accum_steps: int = 1):
  return update(state, batch, dpo_objective(state, batch, hp, accum_steps=accum_steps),
                accum_steps)


# ---------------------------------------------------------------------------
# KTO.
# ---------------------------------------------------------------------------


def mismatched_pairs(batch: Batch) -> dict[str, jax.Array]:
  """Row i's prompt followed by row i+1's completion (mod B), for KTO's
  reference point z₀ (TRL builds the same pairs in its collator).

  Prompt = tokens before the first target, completion = from there to the
  last target; the result is cut to T (z₀ is a detached batch estimate).
  """
  tokens_bt, mask_bt = batch["tokens"], batch["loss_mask"] != 0
  t = tokens_bt.shape[1]
  pos_t = jnp.arange(t)
  start_b = jnp.argmax(mask_bt, axis=1)               # first target
  end_b = last_target_index(mask_bt) + 1              # past the last target
  nxt = lambda x: jnp.roll(x, -1, axis=0)
  src_bt = pos_t - start_b[:, None] + nxt(start_b)[:, None]
  from_prompt_bt = pos_t < start_b[:, None]
  valid_bt = pos_t < (start_b + nxt(end_b) - nxt(start_b))[:, None]
  other_bt = jnp.take_along_axis(nxt(tokens_bt), jnp.clip(src_bt, 0, t - 1), axis=1)
  tokens = jnp.where(from_prompt_bt, tokens_bt, jnp.where(valid_bt, other_bt, 0))
  return {"tokens": tokens, "loss_mask": (valid_bt & ~from_prompt_bt).astype(jnp.int32),
          "segment_ids": valid_bt.astype(jnp.int32),
          "positions": jnp.where(valid_bt, pos_t, 0).astype(jnp.int32)}


def kto_loss_fn(model, batch: Batch, *, ref_model=None, beta: float = 0.1,
                desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
  """KTO on one forward over the batch ++ its mismatched pairs."""
  kl = mismatched_pairs(batch)
  # Right-padded rows need no segment ids or positions; use them only if
  # the batch has them.
  both = {k: jnp.concatenate([batch[k], kl[k]]) for k in _SEQ if k in batch}
  policy_b, policy_kl_b = jnp.split(sequence_logps(model, both)[0], 2)
  if ref_model is None:
    ref_b, ref_kl_b = batch["ref_logps"], batch["ref_kl_logps"]
  else:
    ref_b, ref_kl_b = jnp.split(
        jax.lax.stop_gradient(sequence_logps(ref_model, both)[0]), 2)
  loss, metrics = losses.kto_loss(
      policy_b, ref_b, jax.lax.stop_gradient(policy_kl_b), ref_kl_b,
      batch["label"] != 0, beta=beta, desirable_weight=desirable_weight,
      undesirable_weight=undesirable_weight)
  return loss, {**metrics, **target_metrics(batch["loss_mask"])}


def kto_objective(state: TrainState, batch: Batch, hp: KTOCfg | None = None, *,
                  accum_steps: int = 1) -> LossFn:
  hp = hp or KTOCfg()
  check_batch(batch, per_row=("label",), accum_steps=accum_steps)
  cached = "ref_logps" in batch and "ref_kl_logps" in batch
  return functools.partial(kto_loss_fn, ref_model=None if cached else state.ref_model(),
                           beta=hp.beta, desirable_weight=hp.desirable_weight,
                           undesirable_weight=hp.undesirable_weight)


def kto_step(state: TrainState, batch: Batch, *, hp: KTOCfg | None = None,
             accum_steps: int = 1):
  return update(state, batch, kto_objective(state, batch, hp, accum_steps=accum_steps),
                accum_steps)


# ---------------------------------------------------------------------------
# Listwise.
# ---------------------------------------------------------------------------


def as_lists(batch: Batch) -> dict[str, jax.Array]:
  """A ranked batch as it is (tokens... [B, K, T], scores, list_mask [B, K]),
  or a preference batch as lists of two: chosen (score 1) over rejected
  (score 0)."""
  if "chosen_tokens" not in batch:
    return dict(batch)
  out = {k: jnp.stack([batch["chosen_" + k], batch["rejected_" + k]], axis=1)
         for k in _SEQ if "chosen_" + k in batch}
  b = out["tokens"].shape[0]
  out["scores"] = jnp.tile(jnp.asarray([1.0, 0.0], jnp.float32), (b, 1))
  out["list_mask"] = jnp.ones((b, 2), jnp.int32)
  return out


def check_lists(batch: Batch, accum_steps: int = 1) -> None:
  """Raises ValueError naming the key unless the batch is ranked lists
  ([B, K, T] sequences, [B, K] scores and list_mask) or preference pairs."""
  if "chosen_tokens" in batch:
    check_batch(batch, ("chosen_", "rejected_"), accum_steps=accum_steps)
    return
  missing = [k for k in ("tokens", "loss_mask", "scores", "list_mask") if k not in batch]
  if missing:
    raise ValueError(f"a listwise batch is missing {missing}; it has {sorted(batch)}")
  shape = tuple(batch["tokens"].shape)
  bad = {k: tuple(v.shape) for k, v in batch.items()
         if (k in _SEQ and tuple(v.shape) != shape)
         or (k in ("scores", "list_mask") and tuple(v.shape) != shape[:2])}
  if len(shape) != 3 or bad:
    raise ValueError(f"listwise batches are tokens [B, K, T] (got {shape}) with "
                     f"scores and list_mask [B, K]; mismatched: {bad}")
  if shape[0] % accum_steps:
    raise ValueError(f"batch size {shape[0]} is not divisible by "
                     f"grad_accum_steps={accum_steps}")


def listwise_loss_fn(model, batch: Batch, *, ref_model=None, beta: float = 0.1,
                     loss_type=("plackett_luce",), loss_weights=None,
                     target_temperature: float = 1.0, reference_free: bool = False):
  """A listwise loss (`losses.listwise_loss`) on one forward over the
  B·K candidates."""
  lists = as_lists(batch)
  b, k, t = lists["tokens"].shape
  flat = {key: lists[key].reshape(b * k, t) for key in _SEQ if key in lists}
  logps_bk = sequence_logps(model, flat)[0].reshape(b, k)
  ref_bk = None
  if not reference_free:
    ref_bk = jax.lax.stop_gradient(sequence_logps(ref_model, flat)[0]).reshape(b, k)
  loss, metrics = losses.listwise_loss(
      logps_bk, ref_bk, lists["scores"], lists["list_mask"] != 0, beta=beta,
      loss_type=loss_type, loss_weights=loss_weights or None,
      target_temperature=target_temperature, reference_free=reference_free)
  return loss, {**metrics, **target_metrics(flat["loss_mask"])}


def listwise_objective(state: TrainState, batch: Batch, hp: ListwiseCfg | None = None, *,
                       accum_steps: int = 1) -> LossFn:
  hp = hp or ListwiseCfg()
  check_lists(batch, accum_steps)
  return functools.partial(
      listwise_loss_fn, ref_model=None if hp.reference_free else state.ref_model(),
      beta=hp.beta, loss_type=hp.loss_type, loss_weights=hp.loss_weights,
      target_temperature=hp.target_temperature, reference_free=hp.reference_free)


def listwise_step(state: TrainState, batch: Batch, *, hp: ListwiseCfg | None = None,
                  accum_steps: int = 1):
  return update(state, batch, listwise_objective(state, batch, hp, accum_steps=accum_steps),
                accum_steps)


# ---------------------------------------------------------------------------
# The registry: one record per offline algorithm.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Offline:
  """Everything `fit` needs to train an offline algorithm. Its
  hyper-parameters are its config section (`cfg.<name>`, typed), passed to
  the step and objective as `hp`.

  step:       `(state, batch, *, hp, accum_steps) -> (state, metrics)`
  objective:  `(state, batch, hp, *, accum_steps) -> loss_fn` (evaluation)
  formats:    the record formats it trains on (`rankjax.data`)
  reference:  `hp -> bool`: whether it needs the frozen reference model
  metrics:    its headline metrics (the progress line shows them with the
              loss and gradient norm; metrics.jsonl has all of them)
  """
  step: Callable
  objective: Callable
  formats: tuple[str, ...]
  reference: Callable[[Any], bool] = lambda hp: False
  metrics: tuple[str, ...] = ()


OFFLINE = {
    "sft": Offline(sft_step, sft_objective, (data.PROMPT_COMPLETION, data.LM),
                   metrics=("token_accuracy",)),
    "rm": Offline(rm_step, rm_objective, (data.PREFERENCE,),
                  metrics=("accuracy", "margin")),
    "dpo": Offline(dpo_step, dpo_objective, (data.PREFERENCE,),
                   reference=lambda hp: not dpo_reference_free(hp),
                   metrics=("rewards/accuracies", "rewards/margins")),
    "kto": Offline(kto_step, kto_objective, (data.UNPAIRED_PREFERENCE,),
                   reference=lambda hp: True, metrics=("kl", "rewards/chosen")),
    "listwise": Offline(listwise_step, listwise_objective, (data.RANKED, data.PREFERENCE),
                        reference=lambda hp: not hp.reference_free,
                        metrics=("rewards/accuracies",)),
}
