"""Sampler: parity with transformers, exact filtered distributions, log-probs,
compile counts and input validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

from hf_reference import make_hf_model
from rankjax import models, sampling, testing
from rankjax.sampling import _generate
from rankjax.sampling._processors import RowParams, categorical, filter_logits


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  hf = make_hf_model("llama", seed=1)
  path = tmp_path_factory.mktemp("llama")
  hf.save_pretrained(path)
  return hf, models.from_pretrained(path)


def _prompts(seed=0, lengths=(5, 9, 3)):
  rng = np.random.RandomState(seed)
  return [list(map(int, rng.randint(3, 128, n))) for n in lengths]


def _hf_greedy(hf, prompt, n, eos=None, **kw):
  out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                    eos_token_id=eos, pad_token_id=0, **kw)
  toks = out[0, len(prompt):].tolist()
  if eos is not None and eos in toks:
    toks = toks[:toks.index(eos) + 1]
  return toks


def _ours(out, i):
  return np.asarray(out.tokens[i])[: int(out.lengths[i])].tolist()


def test_greedy_matches_transformers(pair):
  hf, model = pair
  prompts = _prompts()
  cfg = sampling.SamplingConfig(max_new_tokens=12, temperature=0.0)
  out = sampling.generate(model, prompts, cfg)
  for i, p in enumerate(prompts):
    assert _ours(out, i) == _hf_greedy(hf, p, 12)
  assert not np.any(np.asarray(out.finished))


def test_greedy_with_eos_mid_way(pair):
  hf, model = pair
  prompts = _prompts()
  # An EOS id that greedy decoding of prompt 0 emits at step 3.
  eos = _hf_greedy(hf, prompts[0], 12)[3]
  cfg = sampling.SamplingConfig(max_new_tokens=12, temperature=0.0, eos_token_ids=(eos, 127))
  out = sampling.generate(model, prompts, cfg)
  for i, p in enumerate(prompts):
    ref = _hf_greedy(hf, p, 12, eos=[eos, 127])
    assert _ours(out, i) == ref
    assert bool(out.finished[i]) == (ref[-1] in (eos, 127))
  assert int(out.lengths[0]) <= 4
  # Padded after EOS.
  assert np.all(np.asarray(out.tokens[0])[int(out.lengths[0]):] == 0)


def test_repetition_penalty_matches_transformers(pair):
  hf, model = pair
  prompts = _prompts(seed=3)
  cfg = sampling.SamplingConfig(max_new_tokens=10, temperature=0.0, repetition_penalty=1.5)
  out = sampling.generate(model, prompts, cfg)
  for i, p in enumerate(prompts):
    assert _ours(out, i) == _hf_greedy(hf, p, 10, repetition_penalty=1.5)


@pytest.mark.parametrize("length_penalty,early_stopping", [
    (1.0, False), (0.6, False), (1.0, True), (2.0, "never")])
def test_beam_search_matches_transformers(pair, length_penalty, early_stopping):
  hf, model = pair
  prompts = _prompts(seed=2)
  eos = _hf_greedy(hf, prompts[1], 10)[2]
  best = sampling.beam_search(model, prompts, num_beams=4, max_new_tokens=10,
                              length_penalty=length_penalty, early_stopping=early_stopping,
                              eos_token_ids=(eos,))
  hits = 0
  for i, p in enumerate(prompts):
    ref = hf.generate(torch.tensor([p]), max_new_tokens=10, num_beams=4, do_sample=False,
                      eos_token_id=eos, pad_token_id=0, length_penalty=length_penalty,
                      early_stopping=early_stopping, output_scores=True,
                      return_dict_in_generate=True)
    ref_toks = ref.sequences[0, len(p):].tolist()
    n = int(best.lengths[i])
    ours = np.asarray(best.tokens[i])[:n].tolist()
    assert ours == ref_toks[:n] and all(t == 0 for t in ref_toks[n:])
    np.testing.assert_allclose(float(best.scores[i]), float(ref.sequences_scores[0]), rtol=1e-5)
    hits += ours[-1] == eos
  assert hits >= 1  # the EOS path is exercised


def _reference_distribution(logits, temperature, top_k, top_p, min_p):
  """transformers' processors in numpy (sort-based), float64."""
  s = np.asarray(logits, np.float64) / temperature
  if top_k:
    s = np.where(s < np.sort(s)[-top_k], -np.inf, s)
  if top_p < 1:
    order = np.argsort(s)
    probs = np.exp(s[order] - np.logaddexp.reduce(s))
    remove = np.cumsum(probs) <= 1 - top_p
    remove[-1] = False
    s[order[remove]] = -np.inf
  if min_p:
    probs = np.exp(s - np.logaddexp.reduce(s))
    s = np.where(probs < min_p * probs.max(), -np.inf, s)
  return np.exp(s - np.logaddexp.reduce(s))


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", [
    (0.7, 0, 1.0, 0.0),      # temperature only
    (1.0, 6, 1.0, 0.0),      # top-k
    (1.0, 20, 1.0, 0.0),     # wide top-k
    (0.7, 0, 0.8, 0.0),      # narrow nucleus
    (1.0, 0, 0.9, 0.0),      # wide nucleus
    (0.8, 10, 0.7, 0.2),     # all combined, in transformers' order
])
def test_filtered_distribution_chi_square(temperature, top_k, top_p, min_p, optimized_programs):
  model = testing.tiny_model("llama", seed=7, vocab_size=32)
  # Sharpen the tiny model's near-uniform logits so the filters bite.
  model.lm_head[...] = model.lm_head[...] * 20.0
  prompt = [3, 4, 5, 6]
  logits = np.asarray(model(jnp.asarray([prompt]))[0, -1], np.float64)
  want = _reference_distribution(logits, temperature, top_k, top_p, min_p)
  n = 8192
  cfg = sampling.SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k,
                                top_p=top_p, min_p=min_p, num_samples=n)
  out = sampling.generate(model, [prompt], cfg, rng=jax.random.key(1))
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=32)
  assert counts[want == 0].sum() == 0, "sampled a filtered-out token"
  keep = want > 0
  assert keep.sum() >= 2
  stat, pvalue = scipy.stats.chisquare(counts[keep], want[keep] / want[keep].sum() * n)
  assert pvalue > 1e-3, (stat, pvalue)
  # The processed log-prob of each sample is its probability under `want`.
  np.testing.assert_allclose(np.exp(np.asarray(out.sampling_logprobs[:64, 0])),
                             want[np.asarray(out.tokens[:64, 0])], rtol=1e-4)


def _kept_by_sorting(x, top_k, top_p):
  """The tokens top-k then top-p keep, from a full sort in float64; ties
  with the k-th logit stay (transformers' top-k), and the nucleus is the
  smallest top set whose mass reaches p, with its boundary ties."""
  s = -np.sort(-x.astype(np.float64))
  keep = np.ones_like(x, bool)
  if top_k:
    keep &= x >= s[min(top_k, len(s)) - 1]
  if top_p < 1:
    s = s[s >= x[keep].min()]
    cum = np.cumsum(np.exp(s - np.logaddexp.reduce(s)))
    keep &= x >= s[min(np.searchsorted(cum, top_p), len(s) - 1)]
  return keep


def test_filter_thresholds_exact_with_ties():
  """The radix-select thresholds keep exactly the sort-based token sets, on
  rows with many ties, top-k wider than the vocabulary, and mixed rows."""
  rng = np.random.default_rng(0)
  rows, vocab = 48, 97
  x = rng.normal(size=(rows, vocab)) * rng.uniform(0.2, 4, size=(rows, 1))
  x[::2] = np.round(x[::2], 1)  # ties
  x = x.astype(np.float32)
  top_k = rng.integers(1, vocab + 5, size=rows) * (rng.random(rows) < 0.6)
  top_p = np.where(rng.random(rows) < 0.7, rng.uniform(0.05, 0.99, size=rows), 1.0)
  params = RowParams(temperature=jnp.ones(rows), top_k=jnp.asarray(top_k, jnp.int32),
                     top_p=jnp.asarray(top_p, jnp.float32), min_p=jnp.zeros(rows),
                     repetition_penalty=jnp.ones(rows),
                     max_new_tokens=jnp.ones(rows, jnp.int32))
  kept = np.asarray(filter_logits(jnp.asarray(x), params)) > -1e29
  for r in range(rows):
    want = _kept_by_sorting(x[r], int(top_k[r]), float(top_p[r]))
    np.testing.assert_array_equal(kept[r], want, err_msg=f"row {r}: k={top_k[r]} p={top_p[r]}")


def test_filter_thresholds_exact_at_full_vocabulary():
  """At a 32000-token vocabulary every radix pass has many keys per bucket:
  sharp and near-uniform rows, negative and positive logits, ties, and a
  nucleus from a few tokens to most of the vocabulary. Each p lies midway
  between two cumulative masses, so the kept set is decided well above
  float32 rounding (a p within ~1e-7 of a cumulative mass is a tie at this
  precision, for the float64 reference as for transformers in float32)."""
  rng = np.random.default_rng(1)
  rows, vocab = 8, 32000
  scale = np.asarray([0.05, 0.5, 1.0, 2.0, 4.0, 8.0, 1.0, 0.3])[:, None]
  x = (rng.normal(size=(rows, vocab)) * scale - 3.0).astype(np.float32)
  x[6] = np.round(x[6], 1)  # heavy ties
  top_k = np.asarray([0, 0, 50, 0, 0, 31999, 0, 1000], np.int32)
  mass = np.asarray([0.9, 0.5, 0.8, 0.05, 0.99, 0.7, 0.6, 1.0])
  top_p = np.ones(rows, np.float32)
  for r in range(rows):
    s = -np.sort(-x[r].astype(np.float64))
    if top_k[r]:
      s = s[s >= s[top_k[r] - 1]]
    cum = np.cumsum(np.exp(s - np.logaddexp.reduce(s)))
    c = max(2, int(np.searchsorted(cum, mass[r])) + 1)
    while c < len(s) and s[c - 1] == s[c]:  # move to a boundary between distinct logits
      c += 1
    if c < len(s):
      top_p[r] = (cum[c - 2] + cum[c - 1]) / 2
  assert (top_p < 1).sum() == 7   # row 7 is top-k alone
  params = RowParams(temperature=jnp.ones(rows), top_k=jnp.asarray(top_k),
                     top_p=jnp.asarray(top_p), min_p=jnp.zeros(rows),
                     repetition_penalty=jnp.ones(rows),
                     max_new_tokens=jnp.ones(rows, jnp.int32))
  kept = np.asarray(jax.jit(filter_logits)(jnp.asarray(x), params)) > -1e29
  for r in range(rows):
    want = _kept_by_sorting(x[r], int(top_k[r]), float(top_p[r]))
    assert 1 <= want.sum() < vocab
    np.testing.assert_array_equal(kept[r], want, err_msg=f"row {r}: k={top_k[r]} p={top_p[r]}")


def test_inverse_cdf_draw_matches_softmax_across_blocks():
  """The one-uniform-per-row draw: right distribution over several blocks,
  exact log-probs, and never a token with zero probability."""
  rng = np.random.default_rng(3)
  vocab, draws = 300, 24000  # 3 blocks of 128, the last one padded
  logits = rng.normal(size=vocab).astype(np.float32)
  logits[rng.random(vocab) < 0.3] = -1e30  # filtered tokens
  logits[-1] = -1e30  # the last real token of the padded block
  x = jnp.broadcast_to(jnp.asarray(logits), (draws, vocab))
  tokens, logp = jax.jit(categorical)(jax.random.key(0), x)
  tokens, logp = np.asarray(tokens), np.asarray(logp)
  want = np.exp(logits.astype(np.float64) - np.logaddexp.reduce(logits.astype(np.float64)))
  counts = np.bincount(tokens, minlength=vocab)
  assert counts[want == 0].sum() == 0
  keep = want > 0
  _, pvalue = scipy.stats.chisquare(counts[keep], want[keep] / want[keep].sum() * draws)
  assert pvalue > 1e-3, pvalue
  np.testing.assert_allclose(logp, np.log(want[tokens]), rtol=1e-5, atol=1e-5)


def test_logprobs_equal_teacher_forced_recompute():
  model = testing.tiny_model("qwen3", seed=2)
  prompts = _prompts(seed=5, lengths=(4, 7))
  cfg = sampling.SamplingConfig(max_new_tokens=9, temperature=1.0, num_samples=3,
                                eos_token_ids=(9,))
  out = sampling.generate(model, prompts, cfg, rng=jax.random.key(3))
  for r in range(6):
    p = prompts[r // 3]
    n = int(out.lengths[r])
    comp = np.asarray(out.tokens[r])[:n].tolist()
    logits = model(jnp.asarray([p + comp]))[0].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits)[len(p) - 1: len(p) - 1 + n]
    want = np.asarray(jnp.take_along_axis(logp, jnp.asarray(comp)[:, None], -1)[:, 0])
    np.testing.assert_allclose(np.asarray(out.logprobs[r])[:n], want, atol=2e-5)
    # At temperature 1 with no filter the sampling distribution is the model's.
    np.testing.assert_allclose(np.asarray(out.sampling_logprobs[r])[:n], want, atol=2e-5)
    assert np.all(np.asarray(out.logprobs[r])[n:] == 0)


def test_same_rng_same_tokens_and_groups_differ():
  model = testing.tiny_model("llama", seed=4)
  cfg = sampling.SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9, num_samples=4)
  a = sampling.generate(model, _prompts(), cfg, rng=jax.random.key(5))
  b = sampling.generate(model, _prompts(), cfg, rng=jax.random.key(5))
  c = sampling.generate(model, _prompts(), cfg, rng=jax.random.key(6))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
  # The G samples of one prompt are not copies of each other.
  assert len({tuple(r) for r in np.asarray(a.tokens[:4]).tolist()}) > 1


def test_one_compile_across_sampling_params_and_batches():
  model = testing.tiny_model("llama", seed=6)
  _generate._sample_jit.clear_cache()
  base = sampling.SamplingConfig(max_new_tokens=10, temperature=0.0)
  variants = [base,
              dataclasses.replace(base, temperature=0.8, top_k=5),
              dataclasses.replace(base, temperature=1.2, top_p=0.5, min_p=0.1),
              dataclasses.replace(base, max_new_tokens=13)]        # same bucket (16)
  for i, cfg in enumerate(variants):
    sampling.generate(model, _prompts(seed=i, lengths=(3 + i, 6, 2 + i)), cfg)
  assert _generate._sample_jit._cache_size() == 1


def test_group_sampling_prefills_each_prompt_once(monkeypatch):
  model = testing.tiny_model("llama", seed=6)
  shapes = []
  original = models.Transformer.forward_cached

  def recording(self, tokens, *args):
    shapes.append(tokens.shape)
    return original(self, tokens, *args)

  monkeypatch.setattr(models.Transformer, "forward_cached", recording)
  params = sampling.SamplingConfig().row_params(2 * 8)
  jax.eval_shape(lambda t, m: sampling.sample_loop(
      model, t, m, params, jax.random.key(0), num_samples=8, max_new_tokens=16, eos_ids=(2,)),
      jnp.ones((2, 16), jnp.int32), jnp.ones((2, 16), bool))
  assert shapes == [(2, 16), (16, 1)]  # prefill on B prompts, decode on B*G rows


def test_per_row_parameters():
  model = testing.tiny_model("llama", seed=8)
  cfg = sampling.SamplingConfig(max_new_tokens=16, num_samples=2)
  params = cfg.row_params(4).replace(
      temperature=jnp.asarray([0.0, 0.0, 1.0, 1.0]),
      max_new_tokens=jnp.asarray([3, 16, 5, 16], jnp.int32))
  out = sampling.generate(model, _prompts(lengths=(4, 6)), cfg, row_params=params)
  assert np.asarray(out.lengths).tolist() == [3, 16, 5, 16]
  # Greedy rows of one prompt agree on their common prefix.
  np.testing.assert_array_equal(out.tokens[0, :3], out.tokens[1, :3])


@pytest.mark.parametrize("prompts,kw,match", [
    ([[]], {}, "prompt 0 is empty"),
    ([], {}, "no prompts"),
    ([[1, 2, 999]], {}, "token id 999"),
    ([[1] * 500], dict(max_new_tokens=64), "exceeds the cache limit"),
    ([[1, 2]], dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    ([[1, 2]], dict(top_p=0.0), "top_p must be in"),
    ([[1, 2]], dict(top_p=1.5), "top_p must be in"),
    ([[1, 2]], dict(top_k=-1), "top_k must be >= 0"),
])
def test_bad_input_raises_before_compiling(prompts, kw, match):
  model = testing.tiny_model("llama")
  _generate._sample_jit.clear_cache()
  with pytest.raises(ValueError, match=match):
    sampling.generate(model, prompts, sampling.SamplingConfig(**kw))
  assert _generate._sample_jit._cache_size() == 0


def test_beam_search_rejects_sampling():
  with pytest.raises(ValueError, match="beam search with sampling"):
    sampling.beam_search(testing.tiny_model("llama"), [[1, 2]], temperature=0.7)


def test_block_argmax_equals_argmax():
  """The sampler's blocked argmax is jnp.argmax: first index of the maximum,
  with ties across and within blocks and a vocabulary not a multiple of the
  block."""
  rng = np.random.default_rng(3)
  x = np.round(rng.normal(size=(6, 1000)), 1).astype(np.float32)
  x[1, [5, 700]] = 9.0             # tie across blocks
  x[2, [130, 131]] = 9.0           # tie inside a block
  x[3, 999] = 9.0                  # in the padded last block
  x[4] = 0.0                       # all equal
  np.testing.assert_array_equal(np.asarray(sampling.argmax(jnp.asarray(x))),
                                np.argmax(x, axis=-1))
