"""Supervised fine-tuning losses: cross entropy, unlikelihood, T-Few.

Axis letters: B batch, T sequence (or answer-choice tokens), V vocab,
C answer choices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses import _chunked, _common

Array = jax.Array

_NORMALIZE = ("token", "sequence")


def sft_loss(
    logits_btv: Array,
    targets_bt: Array,
    loss_mask_bt: Array,
    *,
    normalize: str = "token",
) -> tuple[Array, dict[str, Array]]:
  """Masked next-token cross entropy.

  ℓ_t = −log p(y_t | y_<t) on positions with loss_mask ≠ 0, averaged

    normalize="token":    Σ_{b,t} m·ℓ / Σ_{b,t} m   (every target token equal)
    normalize="sequence": mean over rows with ≥ 1 target of Σ_t m·ℓ / Σ_t m
                          (every sequence equal, whatever its length).

  An all-zero mask gives loss 0 (finite, zero gradient) and
  metrics["zero_target_batch"] = 1, so a host loop can count such batches.

  Args:
    logits_btv: float[B, T, V] logits predicting targets_bt.
    targets_bt: int[B, T] next tokens (inputs shifted left by one).
    loss_mask_bt: [B, T] 1 on completion tokens, 0 on prompt and padding.
    normalize: "token" (default) or "sequence".

  Returns:
    (loss, metrics) with metrics loss, num_target_tokens, zero_target_batch,
    token_accuracy.
  """
  _common.check_choice("normalize", normalize, _NORMALIZE)
  _common.check_same_shape(targets_bt=targets_bt, loss_mask_bt=loss_mask_bt)
  logp_bt, correct_bt = _sft_token_stats(jnp.asarray(logits_btv), targets_bt)
  return _sft_reduce(-logp_bt, correct_bt, loss_mask_bt, normalize)


def chunked_sft_loss(
    hidden_btd: Array,
    head_dv: Array,
    targets_bt: Array,
    loss_mask_bt: Array,
    *,
    chunk_size: int = 0,
    normalize: str = "token",
) -> tuple[Array, dict[str, Array]]:
  """`sft_loss` on logits = hidden @ head, computed over chunks of tokens
  (`map_token_chunks`): the [B, T, V] logits are never built. Same loss,
  gradients and metrics as `sft_loss(hidden @ head, ...)`.

  Args:
    hidden_btd: [B, T, D] final hidden states predicting targets_bt.
    head_dv: [D, V] LM head.
    targets_bt, loss_mask_bt, normalize: as `sft_loss`.
    chunk_size: tokens per chunk; 0 = unchunked.
  """
  _common.check_choice("normalize", normalize, _NORMALIZE)
  _common.check_same_shape(targets_bt=targets_bt, loss_mask_bt=loss_mask_bt)
  logp_bt, correct_bt = _chunked.map_token_chunks(
      _sft_token_stats, hidden_btd, head_dv, targets_bt, chunk_size=chunk_size)
  return _sft_reduce(-logp_bt, correct_bt, loss_mask_bt, normalize)


def _sft_token_stats(logits_nv: Array, targets_n: Array) -> tuple[Array, Array]:
  """(log p(target) float32, argmax == target) per token."""
  return (_common.token_logprobs(logits_nv, targets_n),
          jnp.argmax(logits_nv, axis=-1) == targets_n)


def _sft_reduce(nll_bt, correct_bt, loss_mask_bt, normalize):
  if normalize == "token":
    loss = _common.masked_mean(nll_bt, loss_mask_bt)
  else:
    per_row_b = _common.masked_mean(nll_bt, loss_mask_bt, axis=-1)
    has_targets_b = jnp.sum(jnp.asarray(loss_mask_bt) != 0, axis=-1) > 0
    loss = _common.masked_mean(per_row_b, has_targets_b)
  num_tokens = jnp.sum(jnp.asarray(loss_mask_bt) != 0).astype(jnp.float32)
  metrics = {
      "loss": loss,
      "num_target_tokens": num_tokens,
      "zero_target_batch": (num_tokens == 0).astype(jnp.float32),
      "token_accuracy": _common.masked_mean(correct_bt, loss_mask_bt),
  }
  return loss, metrics


def token_unlikelihood_loss(
    logits_btv: Array,
    targets_bt: Array,
    loss_mask_bt: Array,
    *,
    alpha: float = 1.0,
    context_mask_bt: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Token-level unlikelihood training (Welleck et al. 2019, arXiv 1908.04319).

  At each target position t the negative candidates are the earlier targets
  of the same row, as a set, minus the current target:
  C_t = {y_j : j < t, context_mask_j ≠ 0} \\ {y_t}. Then

    ℓ_t = −log p(y_t | y_<t) − α · Σ_{c ∈ C_t} log(1 − p(c | y_<t)),

  averaged over positions with loss_mask ≠ 0 (as the reference fairseq
  criterion: MLE + α·UL, summed and divided by the number of target tokens).
  log(1 − p) is computed as log1p(−min(p, 1 − 1e-5)).

  Args:
    logits_btv: float[B, T, V].
    targets_bt: int[B, T].
    loss_mask_bt: [B, T] positions that receive the loss.
    alpha: unlikelihood weight.
    context_mask_bt: [B, T] positions whose targets may be candidates;
      defaults to loss_mask_bt (pass the attention mask to let prompt tokens
      be candidates too). Padding must be 0 here.

  Returns:
    (loss, metrics) with loss, mle_loss, ul_loss, num_target_tokens,
    candidates_per_token.
  """
  _common.check_same_shape(targets_bt=targets_bt, loss_mask_bt=loss_mask_bt,
                           context_mask_bt=context_mask_bt)
  targets_bt = jnp.asarray(targets_bt).astype(jnp.int32)
  cand_ids_btj, cand_btj = _unlikelihood_candidates(targets_bt, context_mask_bt, loss_mask_bt)
  nll_bt, cand_logp_btj = _unlikelihood_token_stats(
      jnp.asarray(logits_btv), (targets_bt, cand_ids_btj))
  return _unlikelihood_reduce(nll_bt, cand_logp_btj, cand_btj, loss_mask_bt, alpha)


def chunked_token_unlikelihood_loss(
    hidden_btd: Array,
    head_dv: Array,
    targets_bt: Array,
    loss_mask_bt: Array,
    *,
    alpha: float = 1.0,
    context_mask_bt: Array | None = None,
    chunk_size: int = 0,
) -> tuple[Array, dict[str, Array]]:
  """`token_unlikelihood_loss` on logits = hidden @ head, computed over
  chunks of tokens (`map_token_chunks`): each chunk gathers its targets' and
  candidates' log-probs; the [B, T, V] logits are never built.

  Args:
    hidden_btd: [B, T, D] final hidden states predicting targets_bt.
    head_dv: [D, V] LM head.
    targets_bt, loss_mask_bt, alpha, context_mask_bt: as
      `token_unlikelihood_loss`.
    chunk_size: tokens per chunk; 0 = unchunked.
  """
  _common.check_same_shape(targets_bt=targets_bt, loss_mask_bt=loss_mask_bt,
                           context_mask_bt=context_mask_bt)
  targets_bt = jnp.asarray(targets_bt).astype(jnp.int32)
  cand_ids_btj, cand_btj = _unlikelihood_candidates(targets_bt, context_mask_bt, loss_mask_bt)
  nll_bt, cand_logp_btj = _chunked.map_token_chunks(
      _unlikelihood_token_stats, hidden_btd, head_dv, (targets_bt, cand_ids_btj),
      chunk_size=chunk_size)
  return _unlikelihood_reduce(nll_bt, cand_logp_btj, cand_btj, loss_mask_bt, alpha)


def _unlikelihood_candidates(targets_bt, context_mask_bt, loss_mask_bt):
  """(candidate ids int32[B, T, T], candidate mask bool[B, T, T]): at
  position t, slot j holds y_j, a candidate when it is in C_t."""
  if context_mask_bt is None:
    context_mask_bt = loss_mask_bt
  # Candidates live on a [B, T, T] grid (position t, earlier position j)
  # rather than a [B, T, V] multi-hot: for LM vocabularies V ≫ T.
  b, t = targets_bt.shape
  valid_bj = jnp.asarray(context_mask_bt) != 0
  same_btj = targets_bt[:, :, None] == targets_bt[:, None, :]
  earlier_tj = jnp.tril(jnp.ones((t, t), dtype=bool), k=-1)  # j < t
  # Count each token value once (a set): keep only its first valid occurrence.
  seen_before_bj = jnp.any(same_btj & earlier_tj & valid_bj[:, None, :], axis=-1)
  first_bj = valid_bj & ~seen_before_bj
  cand_btj = earlier_tj & first_bj[:, None, :] & ~same_btj
  return jnp.broadcast_to(targets_bt[:, None, :], (b, t, t)), cand_btj


def _unlikelihood_token_stats(logits_nv, ids):
  """(−log p(target) [N], log p(candidate) [N, K]) per token, float32."""
  targets_n, cand_ids_nk = ids
  # Float32 log-partition: 1 − p is catastrophically rounded in bf16.
  logits_nv = logits_nv.astype(jnp.float32)
  lse_n1 = jax.nn.logsumexp(logits_nv, axis=-1, keepdims=True)
  target_n1 = jnp.take_along_axis(logits_nv, targets_n[..., None], axis=-1)
  cand_nk = jnp.take_along_axis(logits_nv, cand_ids_nk, axis=-1)
  return (lse_n1 - target_n1)[..., 0], cand_nk - lse_n1


def _unlikelihood_reduce(nll_bt, cand_logp_btj, cand_btj, loss_mask_bt, alpha):
  ul_bt = -_common.masked_sum(_common.log1m_prob(cand_logp_btj), cand_btj, axis=-1)
  mle = _common.masked_mean(nll_bt, loss_mask_bt)
  ul = _common.masked_mean(ul_bt, loss_mask_bt)
  loss = mle + alpha * ul
  metrics = {
      "loss": loss,
      "mle_loss": mle,
      "ul_loss": ul,
      "num_target_tokens": jnp.sum(jnp.asarray(loss_mask_bt) != 0).astype(
          jnp.float32),
      "candidates_per_token": _common.masked_mean(
          jnp.sum(cand_btj, axis=-1), loss_mask_bt),
  }
  return loss, metrics


def repeated_ngram_mask(tokens_bt: Array, mask_bt: Array, *,
                        ngram_size: int = 4) -> Array:
  """bool[B, T]: tokens inside an n-gram that already occurred in its row.

  An n-gram starting at j repeats if the same n tokens start at some i < j
  (overlaps allowed); all n of its tokens are marked. Only n-grams whose
  tokens all have mask ≠ 0 count. This is the candidate set of Welleck et
  al.'s sequence-level unlikelihood (their reference loop skips the last
  n-gram; here every complete n-gram counts).
  """
  if ngram_size < 1:
    raise ValueError(f"ngram_size must be >= 1, got {ngram_size}.")
  _common.check_same_shape(tokens_bt=tokens_bt, mask_bt=mask_bt)
  b, t = tokens_bt.shape
  n = ngram_size
  if n > t:
    return jnp.zeros((b, t), dtype=bool)
  valid_bt = jnp.asarray(mask_bt) != 0

  def shift_left(x_bt, k, fill):
    return jnp.pad(x_bt[:, k:], ((0, 0), (0, k)), constant_values=fill)

  complete_bj = jnp.ones((b, t), dtype=bool)
  match_bji = jnp.ones((b, t, t), dtype=bool)
  for k in range(n):  # n is a small static int.
    tok_k = shift_left(tokens_bt, k, 0)
    complete_bj &= shift_left(valid_bt, k, False)
    match_bji &= tok_k[:, :, None] == tok_k[:, None, :]
  match_bji &= complete_bj[:, :, None] & complete_bj[:, None, :]
  earlier_ji = jnp.tril(jnp.ones((t, t), dtype=bool), k=-1)  # i < j
  repeat_start_bj = jnp.any(match_bji & earlier_ji, axis=-1)
  marked_bt = jnp.zeros((b, t), dtype=bool)
  for k in range(n):  # Spread each repeated start over its n tokens.
    marked_bt |= jnp.pad(repeat_start_bj[:, :t - k], ((0, 0), (k, 0)))
  return marked_bt


def sequence_unlikelihood_loss(
    logits_btv: Array,
    tokens_bt: Array,
    mask_bt: Array,
    *,
    ngram_size: int = 4,
) -> tuple[Array, dict[str, Array]]:
  """Sequence-level unlikelihood (Welleck et al. 2019, arXiv 1908.04319).

  On the model's own continuation x (decoded, then re-scored with teacher
  forcing), tokens of repeated n-grams are negatives:

    L = −Σ_t [x_t ∈ repeated n-gram] · log(1 − p(x_t | x_<t)) / Σ_t mask_t,

  normalised by the number of continuation tokens as the reference
  criterion does. Welleck et al. alternate these updates with MLE updates;
  mix with `sft_loss` at the call site.

  Args:
    logits_btv: float[B, T, V] logits predicting tokens_bt.
    tokens_bt: int[B, T] the sampled continuation.
    mask_bt: [B, T] 1 on continuation tokens, 0 on padding.
    ngram_size: n (4 in the paper).

  Returns:
    (loss, metrics) with loss, repeat_fraction, num_tokens.
  """
  _common.check_same_shape(tokens_bt=tokens_bt, mask_bt=mask_bt)
  negatives_bt = repeated_ngram_mask(tokens_bt, mask_bt, ngram_size=ngram_size)
  logp_bt = _common.token_logprobs(logits_btv, tokens_bt)
  penalty_bt = -_common.log1m_prob(logp_bt) * negatives_bt
  loss = _common.masked_mean(penalty_bt, mask_bt)
  metrics = {
      "loss": loss,
      "repeat_fraction": _common.masked_mean(negatives_bt, mask_bt),
      "num_tokens": jnp.sum(jnp.asarray(mask_bt) != 0).astype(jnp.float32),
  }
  return loss, metrics


# Score of an empty (padding) answer choice in the length-normalised softmax:
# finite, so an all-padding row still gives a finite loss.
_EMPTY_CHOICE_SCORE = -1e9


def tfew_loss(
    choice_token_logps_bct: Array,
    choice_mask_bct: Array,
    correct_b: Array,
    *,
    unlikelihood_weight: float = 1.0,
    length_norm_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
  """T-Few loss for multiple-choice fine-tuning (Liu et al. 2022, arXiv 2205.05638).

  With token log-probs log p(y_t^c | x, y_<t^c) of every answer choice c,
  lengths |y^c| = Σ_t mask and the correct choice c*:

    L_LM = −Σ_b Σ_t log p(y_t^{c*}) / Σ_b |y^{c*}|        (token mean)
    L_UL = −Σ_b Σ_{c ≠ c*} Σ_t log(1 − p(y_t^c)) / Σ_b Σ_{c ≠ c*} |y^c|
    L_LN = mean_b −log softmax_c(β)_{c*},  β_c = log p(y^c) / |y^c|
    L    = L_LM + w_UL · L_UL + w_LN · L_LN     (weights default to 1).

  The reference code adds 1e-2 inside log(1 − p + 1e-2); here log(1 − p) is
  computed as log1p(−min(p, 1 − 1e-5)), like the other unlikelihood losses.
  Choices with no tokens are excluded from the softmax.

  Args:
    choice_token_logps_bct: float[B, C, T] per-token log-probs of each choice
      (e.g. `token_logprobs` on the flattened [B*C] batch, reshaped).
    choice_mask_bct: [B, C, T] 1 on answer tokens, 0 on padding.
    correct_b: int[B] index of the correct choice.
    unlikelihood_weight: w_UL.
    length_norm_weight: w_LN.

  Returns:
    (loss, metrics) with loss, lm_loss, unlikelihood_loss, length_norm_loss,
    accuracy (argmax_c β_c == c*).
  """
  _common.check_same_shape(choice_token_logps_bct=choice_token_logps_bct,
                           choice_mask_bct=choice_mask_bct)
  lp_bct = jnp.asarray(choice_token_logps_bct).astype(jnp.float32)
  mask_bct = jnp.asarray(choice_mask_bct).astype(jnp.float32)
  num_choices = lp_bct.shape[1]
  correct_bc = jax.nn.one_hot(correct_b, num_choices, dtype=jnp.float32)

  lm = -_common.masked_mean(lp_bct, mask_bct * correct_bc[..., None])
  ul = -_common.masked_mean(_common.log1m_prob(lp_bct),
                            mask_bct * (1.0 - correct_bc)[..., None])

  choice_logps_bc = _common.masked_sum(lp_bct, mask_bct, axis=-1)
  lengths_bc = jnp.sum(mask_bct, axis=-1)
  nonempty_bc = lengths_bc > 0
  beta_bc = jnp.where(
      nonempty_bc, choice_logps_bc / jnp.where(nonempty_bc, lengths_bc, 1.0),
      _EMPTY_CHOICE_SCORE)
  ln = -jnp.mean(jnp.sum(jax.nn.log_softmax(beta_bc, axis=-1) * correct_bc,
                         axis=-1))

  loss = lm + unlikelihood_weight * ul + length_norm_weight * ln
  metrics = {
      "loss": loss,
      "lm_loss": lm,
      "unlikelihood_loss": ul,
      "length_norm_loss": ln,
      "accuracy": jnp.mean(
          (jnp.argmax(beta_bc, axis=-1) == correct_b).astype(jnp.float32)),
  }
  return loss, metrics
