"""`model.logits_chunk`: the steps' log-probs through the LM head chunk by
chunk equal the unchunked ones (loss, metrics, gradients), the compiled SFT
step holds no [B, T, V] buffer, and the memory knobs (remat policy, float32
master weights with bf16 compute) train."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import testing, train
from rankjax.config import DPOCfg, SFTCfg
from rankjax.train import _grpo, _ppo
from train_helpers import host, lm_batch, make_state, pref_batch, tiny_model

# Tokens per chunk: the SFT batch's 3·11 = 33 tokens leave a padded last
# chunk; DPO's 8·9 = 72 and GRPO's 6·4 = 24 split evenly.
CHUNK = 4


def _grads(model, objective, batch, hp):
  """(loss, metrics, grads) of the step's objective on one batch, jitted."""
  state, _, bsh = make_state(model, with_reference=True)
  fn = jax.jit(lambda s, b: train.compute_grads(s, b, objective(s, b, hp)))
  return host(fn(state, train.put_batch(batch, bsh)))


@pytest.mark.parametrize("objective, batch, hp", [
    (train.sft_objective, lm_batch(b=3, t=12), SFTCfg()),                   # 33 tokens
    (train.sft_objective, lm_batch(b=3, t=12), SFTCfg(unlikelihood_alpha=0.5)),
    (train.dpo_objective, pref_batch(b=4, t=10), DPOCfg(beta=0.5, sft_weight=0.3)),
], ids=["sft", "sft_unlikelihood", "dpo"])
def test_chunked_step_equals_unchunked(objective, batch, hp):
  # Same seed: the same weights; only the chunk size differs. The policy is
  # perturbed so that policy and reference (and their log-probs) differ.
  def model(chunk):
    return testing.perturbed(tiny_model(seed=3, logits_chunk=chunk), seed=4, scale=0.1)

  plain = _grads(model(0), objective, batch, hp)
  chunked = _grads(model(CHUNK), objective, batch, hp)
  assert plain[0] > 0
  chex.assert_trees_all_close(chunked, plain, rtol=1e-5, atol=1e-5)


def _grpo_inputs(vocab):
  rng = np.random.RandomState(9)
  pmask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], np.int32)
  cmask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0],
                    [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
  return (jnp.asarray(rng.randint(1, vocab, pmask.shape), jnp.int32), jnp.asarray(pmask),
          jnp.asarray(rng.randint(1, vocab, cmask.shape), jnp.int32), jnp.asarray(cmask))


def test_grpo_completion_logps_and_ppo_forward_chunked_equal_unchunked():
  vocab = 97
  prompt, pmask, completion, cmask = _grpo_inputs(vocab)
  tokens = jnp.concatenate([jnp.repeat(prompt, 2, axis=0), completion], 1)
  attn = jnp.concatenate([jnp.repeat(pmask, 2, axis=0), cmask], 1)
  w = jnp.asarray(np.random.RandomState(1).randn(*completion.shape), jnp.float32)

  def run(chunk):
    model = testing.perturbed(tiny_model(seed=7, vocab_size=vocab, logits_chunk=chunk), seed=8)
    state, _, _ = make_state(model)

    def grpo(params):
      logp = _grpo.completion_logps(state.model(params), prompt, pmask, completion, cmask,
                                    temperature=0.7)
      return jnp.sum(w * cmask * logp), logp

    def ppo(params):
      return _ppo._forward(state.model(params), tokens, attn, prompt.shape[1], 0.7)[0]

    out = jax.jit(lambda p: (jax.value_and_grad(grpo, has_aux=True)(p), ppo(p)))(state.params)
    return host(out)

  plain, chunked = run(0), run(CHUNK)  # R·N = 24 tokens: 6 chunks of 4
  chex.assert_trees_all_close(chunked, plain, rtol=1e-5, atol=1e-5)
  ((_, logp), _), ppo_logp = plain
  real = np.asarray(cmask) == 1
  assert np.all(logp[real] < 0) and np.all(ppo_logp[real] < 0)


def test_chunked_sft_step_has_no_full_logits_buffer():
  # Vocab 32000, B·(T-1) = 4·256 tokens: unchunked logits are 125 MiB of
  # float32; a chunk of 64 tokens is 8 MiB. The compiled chunked step's
  # temporaries (gradients and updates of the 2·V·D embedding and head
  # included, ~20 MiB) must not hold even one [B·T, V] array. Only compiled,
  # never run.
  b, t, v = 4, 257, 32000
  batch = {"tokens": np.random.RandomState(0).randint(3, v, (b, t)).astype(np.int32),
           "loss_mask": np.ones((b, t), np.int32)}

  def temp_bytes(chunk):
    model = tiny_model(vocab_size=v, hidden_size=32, logits_chunk=chunk)
    state, sh, bsh = make_state(model)
    step = train.jit_step(train.sft_step, sh, bsh)
    compiled = step.lower(state, train.put_batch(batch, bsh)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  logits_bytes = b * (t - 1) * v * 4
  plain, chunked = temp_bytes(0), temp_bytes(64)
  print(f"SFT step temporaries: unchunked {plain / 2**20:.1f} MiB, "
        f"chunked {chunked / 2**20:.1f} MiB (one [B·T, V] logits: {logits_bytes / 2**20:.1f} MiB)")
  assert plain >= logits_bytes
  assert chunked < logits_bytes
  assert chunked < plain / 3


def test_bf16_compute_float32_master_weights_train_chunked():
  model = tiny_model(dtype="bfloat16", param_dtype="float32", logits_chunk=CHUNK)
  state, sh, bsh = make_state(model, lr=1e-2)
  step = train.jit_step(train.sft_step, sh, bsh)
  batch = train.put_batch(lm_batch(), bsh)
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
    assert metrics["nonfinite"] == 0
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert losses[-1] < 0.7 * losses[0], losses


def _remat_policies(model):
  """The `policy` of every checkpoint (remat) in the model's forward."""
  tokens = jnp.ones((1, 4), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda: model.hidden_states(tokens))()
  out = []

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name in ("checkpoint", "remat", "remat2"):
        out.append(eqn.params["policy"])
      for p in eqn.params.values():
        sub = getattr(p, "jaxpr", p)
        if hasattr(sub, "eqns"):
          walk(sub)
  walk(jaxpr.jaxpr)
  return out


def test_remat_policies_give_the_same_gradients():
  batch, hp = lm_batch(b=4), SFTCfg()
  plain = _grads(tiny_model(num_layers=2), train.sft_objective, batch, hp)
  for policy, saved in (("full", None), ("dots_saveable", jax.checkpoint_policies.dots_saveable)):
    model = tiny_model(num_layers=2, remat=True, remat_policy=policy)
    assert _remat_policies(model) == [saved]  # one remat, around the scanned layer
    remat = _grads(model, train.sft_objective, batch, hp)
    chex.assert_trees_all_close(remat, plain, rtol=1e-5, atol=1e-6)


def test_unknown_remat_policy_and_negative_chunk_are_refused():
  with pytest.raises(ValueError, match="remat_policy"):
    testing.tiny_config(remat_policy="nothing")
  with pytest.raises(ValueError, match="logits_chunk"):
    testing.tiny_config(logits_chunk=-1)
