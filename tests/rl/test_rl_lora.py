"""LoRA in GRPO and PPO: the adapter step is the full step restricted to the
adapters, the reference is the base, a shared value head still trains, and
the stages export merged weights."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors import safe_open

from rankjax import launch, models, parallel, rewards, testing, train
from rankjax.config import GRPOCfg, PPOCfg, SampleCfg
from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer
from rankjax.train import _grpo, _ppo, _rl

TOK = CharTokenizer()
TASK = tasks.ArithmeticTask(ops=("add",), min_digits=1, max_digits=2, seed=0)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(3, TOK.vocab_size, (2, 9)), jnp.int32)
ROLLOUT = train.RolloutSettings(SampleCfg(max_new_tokens=4), (TOK.eos_id,))
# SGD: an update linear in the gradient, so float-level differences between
# two compiled programs stay float-level (Adam's first step is ~sign(g)).
SGD = optax.sgd(0.1)
# A reward that varies within groups from the first step (a random model
# never solves the task): nonzero advantages.
ODD = rewards.Reward("odd", lambda x, _: jnp.sum(x.completion_tokens % 2, -1) * 1.0)
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.data.max_prompt_length=16", "--config.sample.max_new_tokens=3",
        "--config.model.lora_rank=4", "--config.log_every=1"]


def _is_var(x):
  return isinstance(x, nnx.Variable)


def _base(seed=0):
  return testing.tiny_model("llama", seed=seed, vocab_size=TOK.vocab_size, hidden_size=64,
                            num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                            intermediate_size=128)


def _lora(model, seed=0):
  """A LoRA view of `model` (same base arrays) with nonzero B, so the
  adapters change the policy from the first step."""
  view = models.apply_lora(nnx.merge(*nnx.split(model)), 4, 8.0, rngs=nnx.Rngs(params=1))
  for i, name in enumerate(models.lora_targets(view)):
    b = getattr(view.layers, f"{name}_lora_b")
    b[...] = 0.05 * jax.random.normal(jax.random.key(seed + i), b.shape)
  return view


def _state(model, tx=SGD, **kw):
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  state, sh = train.create_train_state(model, tx, mesh, **kw)
  return state, sh, train.batch_sharding(mesh)


def _adapters_only(tx):
  """`tx`, then every update that is not an adapter's zeroed."""
  def zero_rest(updates, state, params=None):
    del params
    keep = lambda u: u if isinstance(u, nnx.LoRAParam) else jax.tree.map(jnp.zeros_like, u)
    return jax.tree.map(keep, updates, is_leaf=_is_var), state
  return optax.chain(tx, optax.GradientTransformation(lambda _: optax.EmptyState(), zero_rest))


def _grpo_step(state, sh, bsh, **hp):
  step = _rl.jit_rl_step(_grpo.grpo_step, sh, bsh, [None], rewards=(ODD,), rollout=ROLLOUT,
                         hp=GRPOCfg(**dict(dict(group_size=4, num_minibatches=2), **hp)))
  batch = next(_rl.PromptBatches(tasks.generate(TASK, "train", 64), TOK, 8, 8, seed=0))
  return step(state, batch, [None])


def _pure(state):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def _adapters(tree):
  """The adapter leaves of a pure dict of the model ({name: array})."""
  return {k: v for k, v in tree["layers"].items() if "_lora_" in k}


def test_lora_grpo_step_is_the_full_step_restricted_to_adapters():
  model = _lora(_base())
  lora, sh_a, bsh = _state(model, with_reference=True)
  full, sh_b, _ = _state(model, _adapters_only(SGD), with_reference=True, trainable=nnx.Param)
  assert lora.lora and all(isinstance(v, nnx.LoRAParam)
                           for v in jax.tree.leaves(lora.params, is_leaf=_is_var))
  before = _pure(full.params)
  lora, m_a = _grpo_step(lora, sh_a, bsh, beta=0.04, num_iterations=2)
  full, m_b = _grpo_step(full, sh_b, bsh, beta=0.04, num_iterations=2)
  after_a, after_b = _pure(lora.params), _pure(full.params)
  delta = lambda t: jax.tree.map(np.subtract, _adapters(t), _adapters(before))
  assert min(float(np.abs(d).max()) for d in jax.tree.leaves(delta(after_a))) > 1e-4
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               _adapters(after_a), _adapters(after_b))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-8),
               delta(after_a), delta(after_b))
  # The full state's base weights did not move.
  rest = lambda t: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(t)
                    if "_lora_" not in jax.tree_util.keystr(k)}
  jax.tree.map(np.testing.assert_array_equal, rest(after_b), rest(before))
  for key in ("loss", "reward", "kl"):
    np.testing.assert_allclose(float(m_a[key]), float(m_b[key]), rtol=1e-5, atol=1e-7,
                               err_msg=key)
  assert float(m_a["nonfinite"]) == 0 and float(m_a["kl"]) > 0


def test_lora_reference_is_the_base():
  base = _base(seed=1)
  base_logits = np.asarray(base(TOKENS))
  state, sh, bsh = _state(_lora(base), with_reference=True)
  assert state.ref is None  # no second copy of the weights
  state, _ = _grpo_step(state, sh, bsh, beta=0.04)
  assert np.abs(np.asarray(state.model()(TOKENS)) - base_logits).max() > 1e-4
  np.testing.assert_array_equal(np.asarray(state.ref_model()(TOKENS)), base_logits)


def test_lora_ppo_shared_critic_trains_adapters_and_value_head():
  base = _rl._with_value_head(_base(seed=2), seed=3)
  base_logits = np.asarray(base(TOKENS))
  policy = _lora(base)
  trainable = _rl._policy_trainable(policy, shared_critic=True)
  state, _, _ = _state(policy, with_reference=True, trainable=trainable)
  assert {k for k in nnx.to_pure_dict(state.params)} == {"layers", "score"}
  params0, frozen0 = _pure(state.params), _pure(state.frozen)
  hp = PPOCfg(num_epochs=1, num_minibatches=2, vf_coef=0.1)
  step = jax.jit(functools.partial(_ppo.ppo_step, hp=hp, rollout=ROLLOUT, rewards=(ODD,)))
  batch = next(_rl.PromptBatches(tasks.generate(TASK, "train", 64), TOK, 8, 8, seed=0))
  state, _, metrics = step(state, None, batch, [None], jnp.float32(0.05))
  assert float(metrics["nonfinite"]) == 0
  params, frozen = _pure(state.params), _pure(state.frozen)
  assert np.abs(params["score"] - params0["score"]).max() > 0  # the critic learns
  assert all(np.abs(v - params0["layers"][k]).max() > 0 for k, v in _adapters(params).items())
  jax.tree.map(np.testing.assert_array_equal, frozen, frozen0)  # the base does not
  np.testing.assert_array_equal(np.asarray(state.ref_model()(TOKENS)), base_logits)
  # Without a shared head the default applies: the adapters alone.
  assert _rl._policy_trainable(policy, shared_critic=False) is None


def _launch(recipe, workdir, *extra):
  argv = ["--config", os.path.join(CONFIGS, f"{recipe}.py"), "--workdir", str(workdir),
          *TINY, *extra]
  assert launch.main(argv) == 0
  return json.loads((workdir / "summary.json").read_text())


def _size(model, kind=nnx.Param):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, kind)))


def _adapter_size(model):
  """Parameters of rank-4 adapters on a model shaped like `model`."""
  view = models.apply_lora(nnx.merge(*nnx.split(model)), 4, 8.0, rngs=nnx.Rngs(params=0))
  return _size(view, nnx.LoRAParam)


def _check_merged_export(path):
  names = set()
  for f in path.glob("*.safetensors"):
    with safe_open(str(f), "np") as st:
      names |= set(st.keys())
  assert names and not [n for n in names if "lora" in n.lower()]
  model = models.from_pretrained(path)
  assert not models.lora_targets(model)
  assert np.all(np.isfinite(np.asarray(model(np.array([[1, 20, 21, 22]], np.int32)))))
  return model


def test_stage_grpo_with_lora_end_to_end(tmp_path):
  summary = _launch("grpo_arith", tmp_path, "--config.pipeline=grpo", "--config.grpo.steps=2",
                    "--config.grpo.num_prompts=4", "--config.grpo.group_size=2")
  grpo = summary["grpo"]
  assert grpo["steps"] == 2 and grpo["lora_rank"] == 4
  model = _check_merged_export(tmp_path / "export")
  assert grpo["trainable_params"] == _adapter_size(model)


@pytest.mark.parametrize("shared", [True, False])
def test_stage_ppo_with_lora_end_to_end(tmp_path, shared):
  summary = _launch("ppo_arith", tmp_path, "--config.pipeline=ppo", "--config.ppo.steps=2",
                    "--config.ppo.num_prompts=4", "--config.ppo.num_epochs=1",
                    "--config.ppo.num_minibatches=1", f"--config.ppo.shared_critic={shared}")
  ppo = summary["ppo"]
  assert ppo["steps"] == 2 and ppo["lora_rank"] == 4
  # The export is the policy alone: a causal LM without the value head.
  model = _check_merged_export(tmp_path / "export")
  assert model.config.num_labels == 0
  # Trained: the adapters and the shared value head [D, 1], or the adapters
  # and the whole separate critic (LoRA applies to the policy).
  critic = (model.config.hidden_size if shared else _size(models.create_abstract(
      model.config.replace(lm_head=False, num_labels=1))))
  assert ppo["trainable_params"] == _adapter_size(model) + critic
