"""Model parity with transformers, KV-cache invariance, HF round trips."""

import json
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_reference import hf_logits, make_hf_model
from rankjax import models, testing

FAMILIES = testing.FAMILIES


def _ragged_batch(seed=0, lengths=(23, 40, 7), vocab=128, left=False):
  """Padded tokens + mask for rows of different lengths."""
  rng = np.random.RandomState(seed)
  t = max(lengths)
  tokens = np.zeros((len(lengths), t), np.int64)
  mask = np.zeros((len(lengths), t), np.int64)
  for i, n in enumerate(lengths):
    sl = slice(t - n, t) if left else slice(0, n)
    tokens[i, sl] = rng.randint(3, vocab, n)
    mask[i, sl] = 1
  return tokens, mask


@pytest.fixture(scope="module", params=FAMILIES)
def hf_pair(request, tmp_path_factory):
  family = request.param
  hf = make_hf_model(family, seed=1)
  path = tmp_path_factory.mktemp(family)
  hf.save_pretrained(path)
  return family, hf, path, models.from_pretrained(path, dtype=jnp.float32)


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_logits_match_transformers(hf_pair, left):
  family, hf, _, model = hf_pair
  tokens, mask = _ragged_batch(left=left)
  ref = hf_logits(hf, tokens, mask)
  out = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
  valid = mask.astype(bool)
  diff = np.abs(out - ref)[valid].max()
  print(f"{family} max |logit diff| = {diff:.2e}")
  assert diff < 1e-4


def test_llama3_rope_scaling_is_exercised():
  # The tiny llama uses original_max_position_embeddings=32 with 40 tokens:
  # turning the scaling off must change the logits, or parity proves nothing.
  cfg = testing.tiny_config("llama")
  scaled = models.create(cfg, seed=0)
  plain = models.create(cfg.replace(rope=models.RopeConfig(theta=cfg.rope.theta)), seed=0)
  tokens = jnp.asarray(_ragged_batch(lengths=(40,))[0])
  assert float(jnp.abs(scaled(tokens) - plain(tokens)).max()) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decode_matches_full_forward(family):
  model = testing.tiny_model(family, seed=3)
  tokens, mask = _ragged_batch(seed=4, lengths=(9, 14, 5), left=True)
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  positions = models.default_positions(mask)
  full = model(tokens, attention_mask=mask)
  # Prefill the first 6 slots at once, then decode one token at a time.
  cache = model.init_cache(batch=3, max_length=20)
  hidden, cache = model.forward_cached(tokens[:, :6], positions[:, :6], mask[:, :6], cache)
  steps = [model.logits(hidden)]
  # The decode steps take the logits from the [V, D] decode head (tied for
  # qwen2, a transposed copy otherwise), as the sampler does.
  head = model.decode_head()
  for t in range(6, tokens.shape[1]):
    sl = slice(t, t + 1)
    hidden, cache = model.forward_cached(tokens[:, sl], positions[:, sl], mask[:, sl], cache)
    steps.append(model.logits(hidden, head))
  cached = jnp.concatenate(steps, axis=1)
  valid = np.asarray(mask).astype(bool)
  np.testing.assert_allclose(np.asarray(cached)[valid], np.asarray(full)[valid], atol=1e-5)
  assert int(cache.index) == tokens.shape[1]


def test_slot_table_equals_reordered_cache():
  """Reading through a slot table (beam search's reorder) gives what
  physically reordering the cache gives, over two decode steps that write
  into each row's own storage."""
  model = testing.tiny_model("llama", seed=5)
  tokens, mask = _ragged_batch(seed=6, lengths=(7, 4, 6), left=True)
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  positions = models.default_positions(mask)
  cache = model.init_cache(batch=3, max_length=12)
  _, cache = model.forward_cached(tokens, positions, mask, cache)
  perm = jnp.asarray([2, 0, 0])
  moved = cache.replace(k=tuple(x[perm] for x in cache.k), v=tuple(x[perm] for x in cache.v),
                        mask=cache.mask[perm])
  table = cache.with_slot_table()
  table = table.replace(rows=table.rows[perm], mask=table.mask[perm])
  pos = positions[perm, -1:] + 1
  for step in range(2):
    nxt = jnp.asarray([[3 + step], [5], [9 - step]])
    h_moved, moved = model.forward_cached(nxt, pos + step, jnp.ones((3, 1), bool), moved)
    h_table, table = model.forward_cached(nxt, pos + step, jnp.ones((3, 1), bool), table)
    np.testing.assert_allclose(np.asarray(h_table), np.asarray(h_moved), atol=1e-6)
  # The new slots went into each row's own storage.
  np.testing.assert_array_equal(np.asarray(table.rows[:, 7:9]), [[0, 0], [1, 1], [2, 2]])


def test_packed_segments_equal_separate_rows():
  model = testing.tiny_model("qwen3", seed=5)
  a = jnp.arange(3, 10)[None]
  b = jnp.arange(20, 31)[None]
  packed = jnp.concatenate([a, b], axis=1)
  seg = jnp.concatenate([jnp.ones_like(a), 2 * jnp.ones_like(b)], axis=1)
  out = model(packed, segment_ids=seg)
  chex.assert_trees_all_close(out[:, :7], model(a), atol=1e-5)
  chex.assert_trees_all_close(out[:, 7:], model(b), atol=1e-5)


def test_round_trip_transformers_loads_our_export(hf_pair, tmp_path):
  family, hf, _, model = hf_pair
  models.save_pretrained(model, tmp_path)
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  tokens, mask = _ragged_batch(seed=7)
  np.testing.assert_allclose(hf_logits(back, tokens, mask), hf_logits(hf, tokens, mask),
                             atol=1e-6)


def test_sharded_safetensors_with_index(tmp_path):
  model = testing.tiny_model("llama", seed=2)
  models.save_pretrained(model, tmp_path, max_shard_bytes=64 << 10)
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  again = models.from_pretrained(tmp_path)
  tokens = jnp.asarray(_ragged_batch(lengths=(12,))[0])
  chex.assert_trees_all_close(again(tokens), model(tokens), atol=0)
  # transformers reads the sharded export too.
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  ref = hf(torch.tensor(np.asarray(tokens))).logits.detach().numpy()
  np.testing.assert_allclose(np.asarray(model(tokens)), ref, atol=1e-4)


def test_scalar_head_matches_sequence_classifier(tmp_path):
  hf = make_hf_model("qwen2", seed=4, classifier=True)
  hf.config.pad_token_id = 0
  hf.save_pretrained(tmp_path)
  model = models.from_pretrained(tmp_path)
  assert not model.config.lm_head and model.config.num_labels == 1
  tokens, mask = _ragged_batch(seed=8)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  values = model.values(model.hidden_states(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
  last = mask.sum(1) - 1
  np.testing.assert_allclose(np.asarray(values)[np.arange(3), last], ref[:, 0], atol=1e-4)
  models.save_pretrained(model, tmp_path / "out")
  back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
  assert back.config.num_labels == 1


def test_fresh_scalar_head_on_causal_lm(hf_pair):
  _, _, path, _ = hf_pair
  critic = models.from_pretrained(path, num_labels=1)
  assert critic.config.lm_head and critic.config.num_labels == 1
  tokens = jnp.ones((2, 5), jnp.int32)
  assert critic.values(critic.hidden_states(tokens)).shape == (2, 5)


def test_abstract_creation_allocates_nothing():
  cfg = models.ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                           num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128)
  abstract = models.create_abstract(cfg)
  leaves = jax.tree.leaves(abstract)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert sum(int(np.prod(x.shape)) for x in leaves) == cfg.num_params


def test_bfloat16_load(hf_pair):
  _, _, path, model32 = hf_pair
  model = models.from_pretrained(path, dtype=jnp.bfloat16)
  assert model.embed[...].dtype == jnp.bfloat16
  tokens = jnp.asarray(_ragged_batch(lengths=(10,))[0])
  diff = jnp.abs(model(tokens).astype(jnp.float32) - model32(tokens)).max()
  assert float(diff) < 0.1


# -- bad checkpoints ----------------------------------------------------------


def _write_config(path, **changes):
  cfg = json.loads((path / "config.json").read_text())
  cfg.update(changes)
  (path / "config.json").write_text(json.dumps(cfg))


def _export(tmp_path, family="llama"):
  models.save_pretrained(testing.tiny_model(family), tmp_path)
  return tmp_path


def test_unknown_architecture(tmp_path):
  _write_config(_export(tmp_path), model_type="gpt2")
  with pytest.raises(models.CheckpointError, match="gpt2.*supported: llama, qwen2, qwen3"):
    models.from_pretrained(tmp_path)


def test_missing_tensor(tmp_path):
  from safetensors.numpy import load_file, save_file
  path = _export(tmp_path)
  tensors = load_file(path / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, path / "model.safetensors")
  with pytest.raises(models.CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
    models.from_pretrained(path)


def test_unexpected_tensor(tmp_path):
  from safetensors.numpy import load_file, save_file
  path = _export(tmp_path)
  tensors = load_file(path / "model.safetensors")
  tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
  save_file(tensors, path / "model.safetensors")
  with pytest.raises(models.CheckpointError, match="unexpected tensors.*model.layers.0.extra.weight"):
    models.from_pretrained(path)


def test_wrong_shape(tmp_path):
  path = _export(tmp_path)
  _write_config(path, intermediate_size=96)
  with pytest.raises(models.CheckpointError, match=r"gate_proj.weight' has shape \(128, 64\), expected \(96, 64\)"):
    models.from_pretrained(path)


def test_pickle_only_directory_is_refused(tmp_path):
  path = _export(tmp_path)
  (path / "model.safetensors").unlink()
  with open(path / "pytorch_model.bin", "wb") as f:
    pickle.dump({"x": 1}, f)
  with pytest.raises(models.CheckpointError, match="pytorch_model.bin.*never loaded"):
    models.from_pretrained(path)


def test_unsupported_rope_type(tmp_path):
  path = _export(tmp_path)
  _write_config(path, rope_scaling={"rope_type": "yarn", "factor": 4.0},
                rope_parameters={"rope_type": "yarn", "factor": 4.0})
  with pytest.raises(models.CheckpointError, match="yarn.*supported: default, linear, llama3"):
    models.from_pretrained(path)


# -- grouped_hidden_states (a prefix shared by G continuations) ----------------

_GROUPED_FAMILIES = {
    "llama": dict(model_type="llama"),
    "qwen2": dict(model_type="qwen2", attention_bias=True),
    "qwen3": dict(model_type="qwen3", qk_norm=True),
}


def _grouped_model(family, seed=0):
  cfg = models.ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=8,
                           rope=models.RopeConfig(theta=10000.0),
                           **_GROUPED_FAMILIES[family])
  return testing.perturbed(models.create(cfg, seed=seed), seed=seed + 100)


def _grouped_batch(seed=0, g=2):
  """B=3 left-padded prefixes of width 5 (0, 2 and 4 pad slots) and R=6
  suffixes of width 4, real tokens first, some with masked tails."""
  rng = np.random.RandomState(seed)
  prefix_mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], np.int32)
  suffix_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0],
                          [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
  assert suffix_mask.shape[0] == prefix_mask.shape[0] * g
  # Padding slots hold junk tokens: they must not matter.
  prefix = rng.randint(1, 97, prefix_mask.shape).astype(np.int32)
  suffix = rng.randint(1, 97, suffix_mask.shape).astype(np.int32)
  return tuple(map(jnp.asarray, (prefix, prefix_mask, suffix, suffix_mask)))


def _grouped_case(seed, family):
  """(model, batch, G, P) of one grouped-forward test: G = 2 continuations."""
  batch = _grouped_batch(seed=seed + 1, g=2)
  return _grouped_model(family, seed=seed), batch, 2, batch[0].shape[1]


def _concat_hidden(model, prefix, prefix_mask, suffix, suffix_mask, g, tile=False):
  """Reference: the full forward on [repeat(prefix, G) ++ suffix]."""
  rep = (lambda x: jnp.tile(x, (g, 1))) if tile else (lambda x: jnp.repeat(x, g, axis=0))
  tokens = jnp.concatenate([rep(prefix), suffix], 1)
  mask = jnp.concatenate([rep(prefix_mask), suffix_mask], 1)
  return model.hidden_states(tokens, positions=models.default_positions(mask),
                             attention_mask=mask)


@pytest.mark.parametrize("family", list(_GROUPED_FAMILIES))
def test_grouped_hidden_states_match_concatenated_forward(family):
  from flax import nnx
  model, (prefix, pmask, suffix, smask), g, p = _grouped_case(11, family)

  @nnx.jit
  def run(model):
    return (model.grouped_hidden_states(prefix, pmask, suffix, smask),
            _concat_hidden(model, prefix, pmask, suffix, smask, g),
            _concat_hidden(model, prefix, pmask, suffix, smask, g, tile=True))

  (prefix_h, suffix_h), ref, wrong = jax.tree.map(np.asarray, run(model))
  assert prefix_h.shape == (3, 5, 32) and suffix_h.shape == (6, 4, 32)
  s_real = np.asarray(smask).astype(bool)
  p_real = np.asarray(pmask).astype(bool)
  np.testing.assert_allclose(np.asarray(suffix_h)[s_real], ref[:, p:][s_real], atol=1e-5)
  for copy in range(g):  # every copy of a prefix sees the same context
    np.testing.assert_allclose(np.asarray(prefix_h)[p_real], ref[copy::g, :p][p_real], atol=1e-5)
  # The check can tell the groups apart: pairing continuation r with prefix
  # r % B instead of r // B gives clearly different suffix states.
  assert np.abs(wrong[:, p:][s_real] - ref[:, p:][s_real]).max() > 1e-2


@pytest.mark.parametrize("family", list(_GROUPED_FAMILIES))
def test_grouped_hidden_states_gradient_matches_concatenated_forward(family):
  from flax import nnx
  model, (prefix, pmask, suffix, smask), g, p = _grouped_case(21, family)
  graphdef, state = nnx.split(model)
  weights = jax.random.normal(jax.random.key(23), (6, 4, 32)) * smask[..., None]

  def grouped_loss(state):
    _, h = nnx.merge(graphdef, state).grouped_hidden_states(prefix, pmask, suffix, smask)
    return jnp.sum(h * weights)

  def concat_loss(state):
    h = _concat_hidden(nnx.merge(graphdef, state), prefix, pmask, suffix, smask, g)
    return jnp.sum(h[:, p:] * weights)

  # One compile for both sides.
  both = jax.jit(lambda st: (jax.value_and_grad(grouped_loss)(st),
                             jax.value_and_grad(concat_loss)(st)))
  (l_grouped, g_grouped), (l_concat, g_concat) = both(state)
  np.testing.assert_allclose(float(l_grouped), float(l_concat), rtol=1e-4, atol=1e-4)
  flat_g, flat_c = jax.tree.leaves(g_grouped), jax.tree.leaves(g_concat)
  assert len(flat_g) == len(flat_c) and len(flat_g) > 0
  for a, b in zip(flat_g, flat_c):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  # The gradient reaches the attention weights through the shared prefix.
  assert float(jnp.abs(g_grouped["layers"]["k"][...]).max()) > 1e-3


def test_grouped_hidden_states_rejects_ragged_groups():
  model = _grouped_model("llama", seed=31)
  prefix, pmask, suffix, smask = _grouped_batch(seed=32)
  with pytest.raises(ValueError, match="5 continuations"):
    model.grouped_hidden_states(prefix, pmask, suffix[:5], smask[:5])
  with pytest.raises(ValueError):
    model.grouped_hidden_states(prefix[:2], pmask[:2], suffix[:3], smask[:3])
