"""Whole tool-use episodes: a tiny model fitted to one transcript per prompt
writes its tool calls, the environment answers inside the decode loop, and
the model finishes from the observation. The transcript is exactly the
text a chat server would show (for `ToolEnv`, the chat template's own
rendering of the conversation); observation tokens are marked as not
generated and get log-prob 0."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tokenizers import AddedToken

from rankjax import envs, inference, sampling, testing
from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer, HFTokenizer
from test_tokenizer import _save, _train_bpe
from test_tools import QWEN_TOOLS, add


def _fit(model, prompts, completions, steps=300, lr=3e-3):
  """Overfit `model` to each prompt's completion (next-token cross-entropy
  on the completion tokens)."""
  sequences = [p + c for p, c in zip(prompts, completions)]
  longest = max(map(len, sequences))
  tokens = np.zeros((len(sequences), longest), np.int32)
  mask = np.zeros((len(sequences), longest), bool)
  for i, (p, s) in enumerate(zip(prompts, sequences)):
    tokens[i, :len(s)], mask[i, len(p):len(s)] = s, True
  graphdef, params = nnx.split(model)
  tx = optax.adam(lr)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(jnp.asarray(tokens))[:, :-1]
    lp = jax.nn.log_softmax(logits.astype(jnp.float32))
    picked = jnp.take_along_axis(lp, jnp.asarray(tokens)[:, 1:, None], -1)[..., 0]
    m = jnp.asarray(mask[:, 1:])
    return -jnp.sum(picked * m) / m.sum()

  # Hundreds of steps of one small program: worth LLVM's -O2 (the suite
  # compiles at -O0, see conftest.py), 4x faster steps for 2x the compile.
  @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 2})
  def step(p, opt):
    loss, g = jax.value_and_grad(loss_fn)(p)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, loss

  opt = tx.init(params)
  for _ in range(steps):
    params, opt, loss = step(params, opt)
  assert float(loss) < 0.01, float(loss)
  return nnx.merge(graphdef, params)


def test_calculator_episode_in_graph_and_on_host():
  tok = CharTokenizer()
  problems = {"12+34=": "<calc>12+34</calc>46\nanswer: 46",
              "7*8=": "<calc>7*8</calc>56\nanswer: 56"}
  prompts = [tok.encode(p, add_bos=True) for p in problems]
  model = _fit(testing.tiny_model("llama", vocab_size=tok.vocab_size), prompts,
               [tok.encode(c) + [tok.eos_id] for c in problems.values()])
  cfg = sampling.SamplingConfig(max_new_tokens=40, temperature=0.0, eos_token_ids=(tok.eos_id,),
                                buckets=(40, 64))
  limits = envs.Limits(max_turns=2, max_observation_tokens=12)
  records = [{"prompt": p} for p in problems]
  outs = [sampling.generate(model, prompts, cfg, env=env)
          for env in (envs.calculator(tok, limits),
                      envs.host(envs.HostCalculator(), tok, records, limits))]
  for out in outs:
    for r, want in enumerate(problems.values()):
      n = int(out.lengths[r])
      tokens = np.asarray(out.tokens[r, :n])
      assert tok.decode(tokens) == want and tokens[-1] == tok.eos_id
      obs = want.index("</calc>") + len("</calc>")
      result = len(want.split("</calc>")[1].split("\n")[0]) + 1
      generated = np.ones(n, bool)
      generated[obs:obs + result] = False           # the calculator's "46\n"
      np.testing.assert_array_equal(np.asarray(out.generated[r, :n]), generated)
      assert np.all(np.asarray(out.logprobs[r, :n])[~generated] == 0.0)
      assert int(out.turns[r]) == 1 and bool(out.finished[r]) and int(out.env_errors[r]) == 0
  np.testing.assert_array_equal(np.asarray(outs[0].tokens), np.asarray(outs[1].tokens))


def test_observation_tokens_are_the_environments():
  """The model was fitted to the transcript of 12+34 (result 46); with an
  environment that answers 77 the transcript holds 77, forced, not the
  result the model would have written."""
  tok = CharTokenizer()
  prompt = tok.encode("12+34=", add_bos=True)
  text = "<calc>12+34</calc>46\nanswer: 46"
  model = _fit(testing.tiny_model("llama", vocab_size=tok.vocab_size), [prompt],
               [tok.encode(text) + [tok.eos_id]])
  calc = envs.calculator(tok, envs.Limits(max_observation_tokens=12))
  lying = envs.Traceable(
      "lying", calc.reset_fn,
      lambda s, t, m: (lambda out: (out[0], jnp.where(out[2] & (out[1] != tok.char_id("\n")),
                                                      tok.char_id("7"), out[1]), *out[2:]))(
          calc.step_fn(s, t, m)),
      calc.turn_ends, calc.limits)
  cfg = sampling.SamplingConfig(max_new_tokens=40, temperature=0.0, eos_token_ids=(tok.eos_id,),
                                buckets=(40,))
  out = sampling.generate(model, [prompt], cfg, env=lying)
  got = tok.decode(np.asarray(out.tokens[0, :int(out.lengths[0])]))
  start = len("<calc>12+34</calc>")
  assert got.startswith("<calc>12+34</calc>77\n"), got
  generated = np.asarray(out.generated[0])
  assert generated[:start].all() and not generated[start:start + 3].any()


@pytest.fixture(scope="module")
def qwen_tok(tmp_path_factory):
  bpe = _train_bpe()
  bpe.add_tokens([AddedToken("<tool_call>", special=False),
                  AddedToken("</tool_call>", special=False)])
  path = _save(tmp_path_factory.mktemp("qwen_tools") / "tok", bpe, {
      "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
      "chat_template": QWEN_TOOLS})
  return HFTokenizer.from_dir(path)


def test_tool_call_episode_renders_what_the_chat_template_renders(qwen_tok):
  tok = qwen_tok
  env = envs.ToolEnv([add], tok, fmt="qwen")
  question = [{"role": "user", "content": "What is 2 plus 3?"}]
  prompt = tok.apply_chat_template(question, add_generation_prompt=True, tokenize=True,
                                   tools=env.tools_schema)
  call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
  step = env.step(env.reset({"prompt": question}), call)
  assert not step.error and not step.done
  final = "The sum is 5.<|im_end|>"
  want = call + step.observation + final
  # What a chat server would show after the whole exchange.
  conversation = tok.apply_chat_template(
      question + [{"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function",
                                   "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
                  {"role": "tool", "content": "5"},
                  {"role": "assistant", "content": "The sum is 5."}],
      tools=env.tools_schema)
  prompt_text = tok.decode(prompt, skip_special_tokens=False)
  assert prompt_text + want == conversation.rstrip("\n")
  model = _fit(testing.tiny_model("qwen2", vocab_size=512, max_position_embeddings=1024),
               [prompt], [tok.encode(want)],
               steps=400)
  records = [{"prompt": question}]
  limits = envs.Limits(max_turns=2, max_observation_tokens=48)
  cfg = sampling.SamplingConfig(max_new_tokens=128, temperature=0.0,
                                eos_token_ids=tuple(tok.eos_ids), pad_token_id=tok.pad_id,
                                buckets=(128, 256))
  out = sampling.generate(model, [prompt], cfg, env=envs.host(env, tok, records, limits))
  n = int(out.lengths[0])
  assert tok.decode(np.asarray(out.tokens[0, :n]), skip_special_tokens=False) == want
  assert int(out.turns[0]) == 1 and int(out.env_errors[0]) == 0 and bool(out.finished[0])
  obs_ids = tok.encode(step.observation)
  generated = np.asarray(out.generated[0, :n])
  assert (~generated).sum() == len(obs_ids)

  # Evaluation renders the tool schemas into the prompt (the fitted model
  # only answers right from that prompt) and runs the same episode.
  samples = inference.collect(
      model, tok, records, k=2, temperature=0.0, rng=jax.random.key(0),
      task=tasks.Task(), verifier=lambda text, record: float(text.endswith("The sum is 5.")),
      max_new_tokens=128, greedy=False, env=envs.host(env, tok, records, limits))
  np.testing.assert_array_equal(samples.turns, [[1, 1]])
  np.testing.assert_array_equal(samples.correct, [[1.0, 1.0]])
