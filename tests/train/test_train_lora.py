"""LoRA: only adapters train, the merged export is the adapted model, and the
reference (adapters zeroed) is exactly the base."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankjax import models, testing, train
from rankjax.config import DPOCfg
from train_helpers import host, lm_batch, make_state, pref_batch, tiny_model

TOKENS = jnp.asarray(lm_batch()["tokens"])


def _lora(model, rank=4, alpha=8.0, **kw):
  view = nnx.merge(*nnx.split(model))  # new modules over the same arrays
  return models.apply_lora(view, rank, alpha, rngs=nnx.Rngs(params=1), **kw)


def _randomize_b(model, seed=0):
  for i, name in enumerate(models.lora_targets(model)):
    b = getattr(model.layers, f"{name}_lora_b")
    b[...] = 0.05 * jax.random.normal(jax.random.key(seed + i), b.shape)


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_merge_equals_adapted(family):
  base = testing.tiny_model(family)
  tokens = jnp.asarray(np.random.RandomState(0).randint(3, 128, (2, 9)))
  adapted = _lora(base)
  np.testing.assert_array_equal(adapted(tokens), base(tokens))  # B = 0 at init
  _randomize_b(adapted)
  out = adapted(tokens)
  assert float(jnp.abs(out - base(tokens)).max()) > 1e-3
  merged = models.merge_lora(adapted)
  assert not models.lora_targets(merged)
  np.testing.assert_allclose(merged(tokens), out, atol=2e-5)


def test_lora_subset_of_targets_and_errors():
  m = _lora(tiny_model(), targets=("q", "down"))
  assert models.lora_targets(m) == ("q", "down")
  assert m.layers.q_lora_a.shape == (1, 32, 4)
  assert m.layers.q_lora_b.shape == (1, 4, 2, 16)
  assert m.layers.down_lora_b.shape == (1, 4, 32)
  with pytest.raises(ValueError, match="already"):
    models.apply_lora(m, 4, 8.0, rngs=nnx.Rngs(params=0))
  with pytest.raises(ValueError, match="targets"):
    _lora(tiny_model(), targets=("nope",))


def test_only_adapters_change_and_export_matches(tmp_path):
  base = tiny_model()
  base_logits = np.asarray(base(TOKENS))
  state, sh, bsh = make_state(_lora(base), with_reference=True)
  assert state.lora and state.ref is None  # the reference is the base, not a copy
  assert all(isinstance(v, nnx.LoRAParam)
             for v in jax.tree.leaves(state.params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  step = train.jit_step(train.sft_step, sh, bsh)
  for _ in range(5):
    state, metrics = step(state, train.put_batch(lm_batch(), bsh))
  # Frozen base unchanged; every adapter B moved away from 0.
  frozen = nnx.to_pure_dict(state.frozen)
  base_pure = nnx.to_pure_dict(nnx.state(base, nnx.Param))
  chex.assert_trees_all_equal(host(frozen), host(base_pure))
  after = nnx.to_pure_dict(state.params)
  for name in models.lora_targets(state.model()):
    assert np.abs(np.asarray(after["layers"][f"{name}_lora_b"])).max() > 0, name
  # Reference = adapters zeroed = exactly the base.
  np.testing.assert_array_equal(np.asarray(state.ref_model()(TOKENS)), base_logits)
  # Merged export, loaded back, equals the adapted model.
  adapted = state.model()
  adapted_logits = np.asarray(adapted(TOKENS))
  assert np.abs(adapted_logits - base_logits).max() > 1e-4
  models.save_pretrained(models.merge_lora(adapted), tmp_path)
  loaded = models.from_pretrained(tmp_path)
  np.testing.assert_allclose(np.asarray(loaded(TOKENS)), adapted_logits, atol=2e-5)


def test_lora_dpo_starts_at_reference_and_learns():
  state, sh, bsh = make_state(_lora(tiny_model()), with_reference=True, lr=1e-2)
  step = train.jit_step(train.dpo_step, sh, bsh, hp=DPOCfg(beta=0.5))
  losses = []
  for _ in range(10):
    state, metrics = step(state, train.put_batch(pref_batch(), bsh))
    losses.append(float(host(metrics)["loss"]))
  assert abs(losses[0] - np.log(2)) < 1e-6
  assert losses[-1] < losses[0] - 0.05, losses


def test_causal_attention_blocks_match_full_attention():
  """The model's block-causal attention (used by every training forward)
  equals plain masked attention wherever a query sees a key."""
  from rankjax.models import _transformer as tr
  rng = np.random.RandomState(0)
  b, t, n, k, h = 2, 300, 4, 2, 16   # 300: three blocks of 128, the last partial
  q = jnp.asarray(rng.randn(b, t, n, h), jnp.float32)
  kk = jnp.asarray(rng.randn(b, t, k, h), jnp.float32)
  v = jnp.asarray(rng.randn(b, t, k, h), jnp.float32)
  seg = np.ones((b, t), np.int32)
  seg[0, 150:] = 2        # two packed documents
  seg[1, 280:] = 0        # right padding
  idx = np.arange(t)
  mask = (idx[None, :, None] >= idx[None, None, :]) & (seg[:, :, None] == seg[:, None, :])
  mask = jnp.asarray(mask)
  out = tr.causal_attention(q, kk, v, mask)
  ref = tr.attention(q, kk, v, mask)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)
