"""GRPO and PPO on multi-turn rollouts: environment observations get no
gradient, the steps run with the calculator in the loop, sharded sampling
equals one device, and a killed multi-turn run resumes exactly."""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from multidevice import run_on_8_devices
from safetensors.numpy import load_file

from rankjax import envs, parallel, rewards, testing, train
from rankjax.config import GRPOCfg, OptimCfg, PPOCfg, SampleCfg
from rankjax.data import tasks
from rankjax.tokenizer import CharTokenizer
from rankjax.train import _grpo, _ppo, _rl

TOK = CharTokenizer()
TASK = tasks.ArithmeticTask(ops=("add",), min_digits=1, max_digits=2, seed=0)
# Short turns, so a random model takes several (see tests/envs/test_multiturn.py).
LIMITS = envs.Limits(max_turns=3, turn_max_tokens=4, max_observation_tokens=12)
N = 32          # the completion buffer: model and environment tokens together
B, G = 4, 4     # prompts and completions per prompt
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A traceable reward with spread inside every group (so advantages are non-zero).
ODD = rewards.Reward("odd", lambda x, _: jnp.sum((x.completion_tokens % 2) * x.completion_mask,
                                                 -1) * 0.1)


def _model(seed=0):
  return testing.tiny_model("llama", seed=seed, vocab_size=TOK.vocab_size, hidden_size=32,
                            num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                            intermediate_size=64)


def _state(model, *, with_reference=False):
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  tx = train.make_optimizer(OptimCfg(learning_rate=1e-2, warmup_steps=0, schedule="constant"),
                            1000)
  state, sh = train.create_train_state(model, tx, mesh, with_reference=with_reference)
  return state, sh, train.batch_sharding(mesh)


def _records():
  return tasks.generate(TASK, "train", 32)


def _batch(b=B):
  return next(_rl.PromptBatches(_records(), TOK, b, 8, seed=0))


def _settings(env):
  return train.RolloutSettings(SampleCfg(max_new_tokens=N, temperature=1.0), (TOK.eos_id,),
                               TOK.pad_id, env)


@functools.cache
def _rollout():
  """A multi-turn GRPO rollout of the calculator (B prompts x G samples)."""
  state, _, _ = _state(_model())
  fn = jax.jit(functools.partial(train.rollout, rewards=(ODD,), reward_states=(None,),
                                 settings=_settings(envs.calculator(TOK, LIMITS)),
                                 group_size=G))
  ro = fn(state.model(), _batch(), rng=jax.random.key(0))
  observed = np.asarray(ro.completion_mask & ~ro.model_mask)
  assert observed.any() and int(ro.turns.max()) >= 2, "the rollout took no turns"
  return ro


def _update_data(ro, hp, old=None, ref=None):
  """`policy_updates` data, as `grpo_step` builds it."""
  adv, _ = _grpo.advantages(ro.total, ro.valid, hp)
  data = dict(prompt=ro.prompt, prompt_mask=ro.prompt_mask, completion=ro.completion,
              completion_mask=ro.completion_mask, model_mask=ro.model_mask,
              loss_mask=ro.model_mask & ro.valid[:, None],
              old=ro.logprobs if old is None else old, adv=adv,
              reward=jnp.where(ro.valid, ro.total, 0.0), list_mask=ro.valid)
  if ref is not None:
    data["ref"] = ref
  return data


def _garbage(ro, x, seed):
  """x with random values (|x| up to ~40) where the model did not write."""
  noise = 10.0 * jax.random.normal(jax.random.key(seed), x.shape)
  return jnp.where(ro.model_mask, x, noise)


# -- observation tokens get no gradient ----------------------------------------


@pytest.mark.parametrize("kw", [
    dict(aggregation="dapo"),
    dict(aggregation="grpo", ratio_level="sequence"),
    dict(aggregation="dr_grpo", beta=0.1),
    dict(aggregation="bnpo", objective=("clipped", "plackett_luce"), beta=0.1),
])
def test_gradient_wrt_logprobs_is_zero_at_observations(kw):
  ro = _rollout()
  hp = GRPOCfg(group_size=G, **kw)
  model_mask = np.asarray(ro.model_mask)
  logp = ro.logprobs + 0.3 * jax.random.normal(jax.random.key(1), ro.logprobs.shape)
  ref = ro.logprobs - 0.2

  def loss(logp, data):
    return _grpo.objective_loss(logp, data, hp=hp, max_new_tokens=N,
                                active=jnp.sum(data["loss_mask"]))[0]

  data = _update_data(ro, hp, ref=ref)
  value, grad = jax.value_and_grad(loss)(logp, data)
  grad = np.asarray(grad)
  assert np.all(grad[~model_mask] == 0.0)
  assert np.count_nonzero(grad[model_mask]) > model_mask.sum() // 2
  # Garbage where the model did not write (π, π_old, π_ref) changes nothing.
  bad = _update_data(ro, hp, old=_garbage(ro, ro.logprobs, 2), ref=_garbage(ro, ref, 3))
  bad_value, bad_grad = jax.value_and_grad(loss)(_garbage(ro, logp, 4), bad)
  assert float(bad_value) == float(value)
  np.testing.assert_array_equal(np.asarray(bad_grad), grad)


def test_policy_update_ignores_observation_logprobs():
  """The full update (forward, loss, optimizer, μ=2 passes of 2 minibatches)
  gives bit-identical parameters with π_old = 0 or garbage at observations."""
  ro = _rollout()
  hp = GRPOCfg(group_size=G, num_minibatches=2, num_iterations=2, beta=0.05)
  assert np.all(np.asarray(ro.logprobs)[~np.asarray(ro.model_mask)] == 0.0)
  ref = jnp.where(ro.model_mask, ro.logprobs - 0.1, 0.0)
  order = _grpo.minibatch_order(jax.random.key(5), B, hp)
  update = jax.jit(functools.partial(train.policy_updates, hp=hp, max_new_tokens=N))
  params = []
  for data in (_update_data(ro, hp, ref=ref),
               _update_data(ro, hp, old=_garbage(ro, ro.logprobs, 6), ref=_garbage(ro, ref, 7))):
    state, _, _ = _state(_model(), with_reference=True)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = update(state, data, order)
    params.append(jax.tree.map(np.asarray, state.params))
    assert float(jnp.max(metrics["nonfinite"])) == 0.0
  jax.tree.map(np.testing.assert_array_equal, params[0], params[1])
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params[0], before)
  assert max(jax.tree.leaves(moved)) > 0.0


# -- whole steps with the calculator in the loop --------------------------------


def _check_env_metrics(metrics):
  m = {k: float(v) for k, v in metrics.items()}
  assert all(np.isfinite(v) for v in m.values()), m
  assert m["nonfinite"] == 0.0 and m["env/turns"] > 0 and m["env/turn_rate"] > 0
  # Observations are in the transcript but not in the model's length.
  assert m["transcript_length"] > m["completion_length"]
  return m


@pytest.mark.parametrize("observations", envs.OBSERVATIONS)
def test_grpo_step_with_traceable_calculator(observations):
  state, sh, bsh = _state(_model())
  before = jax.tree.map(np.asarray, state.params)
  hp = GRPOCfg(group_size=G, num_minibatches=2)
  limits = dataclasses.replace(LIMITS, observations=observations)
  step = _rl.jit_rl_step(_grpo.grpo_step, sh, bsh, [None], hp=hp, rewards=(ODD,),
                         rollout=_settings(envs.calculator(TOK, limits)))
  batches = _rl.PromptBatches(_records(), TOK, B, 8, seed=0)
  for _ in range(2):
    state, metrics = step(state, next(batches), [None])
  _check_env_metrics(metrics)
  assert step._cache_size() == 1
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), state.params,
                       before)
  assert max(jax.tree.leaves(moved)) > 0.0


def test_ppo_step_with_host_calculator_and_env_reward():
  records = _records()
  model = _rl._with_value_head(_model(), seed=3)
  state, _, _ = _state(model, with_reference=True)
  rws = (ODD, rewards.env_reward(weight=0.5))
  env = envs.host(envs.HostCalculator(), TOK, records, LIMITS)
  step = jax.jit(functools.partial(_ppo.ppo_step, hp=PPOCfg(num_epochs=1, num_minibatches=2),
                                   rollout=_settings(env), rewards=rws), donate_argnums=0)
  batches = _rl.PromptBatches(records, TOK, 8, 8, seed=0)
  coef = jnp.float32(0.01)
  for _ in range(2):
    state, _, metrics = step(state, None, next(batches), [None, None], coef)
  m = _check_env_metrics(metrics)
  assert m["env/errors"] > 0     # a random model writes no valid call


# -- sharded == one device -------------------------------------------------------


def test_sharded_multiturn_sampling_matches_single_device():
  result = run_on_8_devices(os.path.join(os.path.dirname(__file__),
                                         "multiturn_sharded_check.py"))
  for kind in ("traceable", "host", "prefill"):
    one, many = result[kind]["single"], result[kind]["sharded"]
    assert "data" in many["token_sharding"], many["token_sharding"]
    for field in ("tokens", "generated", "turns", "lengths", "env_errors"):
      np.testing.assert_array_equal(many[field], one[field], err_msg=f"{kind} {field}")
    np.testing.assert_allclose(many["logprobs"], one["logprobs"], atol=1e-5, err_msg=kind)
    assert max(one["turns"]) >= 2 and not all(one["generated"][0])   # really multi-turn
  np.testing.assert_array_equal(result["host"]["single"]["tokens"],
                                result["traceable"]["single"]["tokens"])


# -- kill -9 and resume (the pattern of tests/scale/test_resume_multiprocess.py) --

STEPS = 12
TINY = ["--config", "configs/grpo_tools_arith.py", "--config.pipeline=grpo",
        f"--config.grpo.steps={STEPS}", "--config.log_every=1", "--config.eval_every=0",
        "--config.model.hidden_size=32", "--config.model.num_layers=2",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.grpo.num_prompts=4", "--config.grpo.group_size=2",
        "--config.sample.max_new_tokens=24", "--config.env.turn_max_tokens=4",
        "--config.env.max_turns=3", "--config.optim.warmup_steps=0",
        "--config.data.num_train=64", "--config.data.num_eval=8",
        "--config.checkpoint.async_save=false", "--config.checkpoint.every=2"]
# A host reward with spread inside groups (so the policy moves), slow enough
# (0.3 s a step) that the kill lands mid-run.
REWARD = """import time
def spread(prompts, completions, **columns):
  time.sleep(0.3)
  return [float(len(set(c))) for c in completions]
"""


def _launch(workdir, *extra, wait=True):
  cmd = [sys.executable, "-m", "rankjax.launch", *TINY, "--workdir", str(workdir), *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  return out


def _metrics(workdir):
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  return {r["step"]: r for r in rows if r.get("stage") == "grpo" and "loss" in r}


def test_sigkill_and_restart_matches_uninterrupted_multiturn_run(tmp_path):
  reward = tmp_path / "spread.py"
  reward.write_text(REWARD)
  extra = f"--config.grpo.rewards={reward}:spread"
  straight = tmp_path / "straight"
  killed = tmp_path / "killed"
  # Both start together (the straight run only has to finish).
  first = _launch(straight, extra, wait=False)
  proc = _launch(killed, extra, wait=False)
  ckpt = killed / "checkpoints" / "grpo"
  deadline = time.time() + 300
  # Orbax writes into a temporary directory and renames it to the step
  # number once complete: a digit-named directory is a committed checkpoint.
  while time.time() < deadline and proc.poll() is None:
    if ckpt.exists() and any(d.name.isdigit() and int(d.name) >= 4 for d in ckpt.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[0][-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out, _ = first.communicate(timeout=600)
  assert first.returncode == 0, out[-3000:]
  steps_before = sorted(_metrics(killed))
  assert steps_before and max(steps_before) < STEPS, "the run finished before it was killed"
  out = _launch(killed, extra)
  assert "resumed from step" in out
  a = load_file(straight / "export" / "model.safetensors")
  b = load_file(killed / "export" / "model.safetensors")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  ma, mb = _metrics(straight), _metrics(killed)
  assert sorted(ma) == sorted(mb) == list(range(1, STEPS + 1))
  for step in ma:
    for key in ("loss", "reward", "env/turns", "env/errors", "transcript_length", "grad_norm"):
      assert ma[step][key] == mb[step][key], (step, key, ma[step][key], mb[step][key])
  assert ma[STEPS]["env/turns"] > 0 and max(m["grad_norm"] for m in ma.values()) > 0
