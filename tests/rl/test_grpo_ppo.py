"""GRPO / PPO steps: one compile, in-graph == host verifier, bad input, and
learning on the built-in arithmetic task."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import parallel, rewards, testing, train
from rankjax.config import OptimCfg
from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer
from rankjax.train import _grpo, _ppo, _rl

TOK = CharTokenizer()
TASK = tasks.ArithmeticTask(ops=("add",), min_digits=1, max_digits=2, seed=0)


def _model(seed=0):
  return testing.tiny_model("llama", seed=seed, vocab_size=TOK.vocab_size, hidden_size=64,
                            num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                            intermediate_size=128)


def _state(model, lr=1e-3, *, with_reference=False):
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  tx = train.make_optimizer(OptimCfg(learning_rate=lr, warmup_steps=0, schedule="constant"), 1000)
  state, sh = train.create_train_state(model, tx, mesh, with_reference=with_reference)
  return state, sh, train.batch_sharding(mesh)


def _batches(split="train", b=8):
  return _rl.PromptBatches(tasks.generate(TASK, split, 64), TOK, b, 8, seed=0)


def _settings(**kw):
  kw = dict(dict(group_size=4, max_new_tokens=4, eos_ids=(TOK.eos_id,), num_minibatches=2), **kw)
  return _grpo.GRPOSettings(**kw)


def _jit(state_sh, batch_sh, rws, settings):
  return _rl.jit_rl_step(_grpo.grpo_step, state_sh, batch_sh, [r.state for r in rws],
                         settings=settings, rewards=tuple(rws))


def test_grpo_step_compiles_once():
  state, sh, bsh = _state(_model(), with_reference=True)
  rws = [rewards.arithmetic_correct(TOK), rewards.eos_reward(weight=0.1)]
  step = _jit(sh, bsh, rws, _settings(beta=0.04, num_iterations=2))
  batches = _batches()
  for _ in range(3):
    state, metrics = step(state, next(batches), [r.state for r in rws])
  assert step._cache_size() == 1
  assert np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 0
  assert int(state.step) == 3 * 2 * 2  # steps x iterations x minibatches


def test_in_graph_and_host_verifier_give_identical_updates():
  records = tasks.generate(TASK, "train", 64)
  batches = _rl.PromptBatches(records, TOK, 8, 8, seed=0)
  batch = next(batches)
  in_graph = [rewards.arithmetic_correct(TOK)]
  host = [rewards.host_reward(
      lambda prompts, completions, answer: [tasks.verify(c, a) for c, a in zip(completions, answer)],
      TOK, columns={"answer": [r["answer"] for r in records]}, name="correct")]
  outs = []
  for rws in (in_graph, host):
    state, sh, bsh = _state(_model(seed=1))
    outs.append(_jit(sh, bsh, rws, _settings())(state, batch, [r.state for r in rws]))
  (s_a, m_a), (s_b, m_b) = outs
  for key in ("reward", "advantage_abs_mean", "loss", "zero_std_group_fraction"):
    assert float(m_a[key]) == float(m_b[key]), key
  jax.tree.map(np.testing.assert_array_equal, s_a.params, s_b.params)


def test_all_nan_reward_skips_the_update():
  state, sh, bsh = _state(_model())
  before = jax.tree.map(np.asarray, state.params)
  nan = rewards.Reward("never", lambda x, _: jnp.full(x.completion_tokens.shape[:1], jnp.nan))
  state, metrics = _jit(sh, bsh, [nan], _settings())(state, next(_batches()), [None])
  assert float(metrics["skipped_no_reward"]) == 1.0 and float(metrics["nonfinite"]) == 1.0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


def test_raising_host_reward_names_the_reward():
  state, sh, bsh = _state(_model())
  bad = rewards.host_reward(lambda prompts, completions: 1 / 0, TOK, name="flaky_judge")
  with pytest.raises(Exception, match="flaky_judge"):
    out = _jit(sh, bsh, [bad], _settings())(state, next(_batches()), [None])
    jax.block_until_ready(out)


@pytest.mark.parametrize("kw,match", [
    (dict(group_size=1), "group_size >= 2"),
    (dict(num_minibatches=3), "must divide B\\*G"),
    (dict(advantage="ppo"), "one of grpo, rloo, reinforce_pp"),
])
def test_bad_settings_fail_before_compiling(kw, match):
  with pytest.raises(ValueError, match=match):
    _grpo.check_settings(_settings(**kw), 8)


def _sft(model, steps=300):
  """A brief SFT on imperfect demonstrations (half the answers wrong, as
  `data.sft_noise=0.5`), so RL starts from a model that proposes right and
  wrong answers."""
  state, sh, bsh = _state(model, lr=3e-3)
  step = train.jit_step(train.sft_step, sh, bsh)
  recs = tasks.generate(TASK, "train", 4096)
  rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in recs]
  recs = train._data.noisy_demonstrations(rows, recs, 0.5, seed=0, marker=None)
  rng = np.random.RandomState(0)
  for _ in range(steps):
    rows = [recs[i] for i in rng.randint(0, len(recs), 32)]
    toks = np.zeros((32, 12), np.int32)
    mask = np.zeros((32, 12), np.int32)
    for i, r in enumerate(rows):
      p, c = TOK.encode(r["prompt"], add_bos=True), TOK.encode(r["completion"]) + [TOK.eos_id]
      toks[i, :len(p) + len(c)] = p + c
      mask[i, len(p):len(p) + len(c)] = 1
    state, _ = step(state, {"tokens": toks, "loss_mask": mask})
  return state.model()


def _accuracy(model, n=256, seed=0):
  """Held-out accuracy of temperature-1 samples (n problems x 4 samples)."""
  from rankjax import sampling
  recs = tasks.generate(TASK, "test", n)
  cfg = sampling.SamplingConfig(max_new_tokens=5, temperature=1.0, num_samples=4,
                                eos_token_ids=(TOK.eos_id,))
  out = sampling.generate(model, [TOK.encode(r["prompt"], add_bos=True) for r in recs], cfg,
                          rng=jax.random.key(seed))
  texts = [TOK.decode(t[:l]) for t, l in zip(np.asarray(out.tokens), np.asarray(out.lengths))]
  return np.mean([tasks.verify(t, recs[i // 4]["answer"]) for i, t in enumerate(texts)])


@pytest.fixture(scope="module")
def sft_model():
  return _sft(_model(seed=2))


def test_grpo_raises_held_out_accuracy(sft_model):
  before = _accuracy(sft_model)
  state, sh, bsh = _state(sft_model, lr=3e-4)
  rws = [rewards.arithmetic_correct(TOK)]
  step = _jit(sh, bsh, rws, _settings(group_size=8, num_minibatches=2))
  batches = _rl.PromptBatches(tasks.generate(TASK, "train", 4096), TOK, 16, 8, seed=0)
  for _ in range(60):
    state, metrics = step(state, next(batches), [None])
  after = _accuracy(state.model())
  # Two-proportion z-test over 1024 held-out samples each.
  n = 1024
  p = (before + after) / 2
  z = (after - before) / np.sqrt(2 * p * (1 - p) / n)
  print(f"GRPO held-out accuracy {before:.3f} -> {after:.3f} (z = {z:.1f})")
  assert after > before + 0.1 and z > 4


def test_ppo_raises_mean_reward(sft_model):
  before = _accuracy(sft_model, seed=1)
  model = _rl._with_value_head(sft_model, seed=3)
  state, sh, bsh = _state(model, lr=1e-3, with_reference=True)
  rws = [rewards.arithmetic_correct(TOK)]
  settings = _ppo.PPOSettings(max_new_tokens=4, eos_ids=(TOK.eos_id,), num_epochs=2,
                              num_minibatches=2, vf_coef=0.1)
  step = jax.jit(functools.partial(_ppo.ppo_step, settings=settings, rewards=tuple(rws)),
                 donate_argnums=0)
  batches = _rl.PromptBatches(tasks.generate(TASK, "train", 256), TOK, 32, 8, seed=0)
  coef, first, last = jnp.float32(0.01), [], []
  for i in range(40):
    state, _, metrics = step(state, None, next(batches), [None], coef)
    (first if i < 5 else last).append(float(metrics["reward"]))
  after = _accuracy(state.model(), seed=1)
  print(f"PPO reward {np.mean(first):.3f} -> {np.mean(last[-5:]):.3f}; "
        f"held-out {before:.3f} -> {after:.3f}")
  assert np.mean(last[-5:]) > np.mean(first) + 0.1
  assert after > before + 0.05
