"""Environments that break their contract fail with a message naming the
environment, the turn and the problem; `envs.from_config` and the config
name the key; GAE skips observation tokens."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import config as config_lib
from rankjax import envs, errors, losses, sampling, testing
from rankjax.config import EnvCfg
from rankjax.tokenizer import CharTokenizer

TOK = CharTokenizer()
LIMITS = envs.Limits(max_turns=3, turn_max_tokens=4, max_observation_tokens=12)
N = 40


@functools.cache
def _model():
  return testing.tiny_model("llama", vocab_size=TOK.vocab_size, seed=0)


def _prompts():
  return [TOK.encode("12+34=", add_bos=True), TOK.encode("7*8=", add_bos=True)]


def _generate(env):
  cfg = sampling.SamplingConfig(max_new_tokens=N, temperature=0.0, eos_token_ids=(TOK.eos_id,),
                                buckets=(N,))
  return jax.block_until_ready(sampling.generate(_model(), _prompts(), cfg, env=env))


# -- traceable environments: checked while tracing -----------------------------


def _ok_step(state, tokens_c, turn_c):
  o = LIMITS.max_observation_tokens
  return (state + 1, jnp.zeros((o,), jnp.int32), jnp.arange(o) < 2, jnp.float32(0.0),
          jnp.bool_(False))


def _float_tokens(state, tokens_c, turn_c):
  state, obs, mask, reward, done = _ok_step(state, tokens_c, turn_c)
  return state, obs.astype(jnp.float32), mask, reward, done


def _too_wide(state, tokens_c, turn_c):
  state, _, _, reward, done = _ok_step(state, tokens_c, turn_c)
  o = LIMITS.max_observation_tokens + 4
  return state, jnp.zeros((o,), jnp.int32), jnp.ones((o,), bool), reward, done


def _four_tuple(state, tokens_c, turn_c):
  return _ok_step(state, tokens_c, turn_c)[:4]


def _int_done(state, tokens_c, turn_c):
  state, obs, mask, reward, _ = _ok_step(state, tokens_c, turn_c)
  return state, obs, mask, reward, jnp.int32(0)


def _int_reward(state, tokens_c, turn_c):
  state, obs, mask, _, done = _ok_step(state, tokens_c, turn_c)
  return state, obs, mask, jnp.int32(1), done


@pytest.mark.parametrize("step_fn,match", [
    (_float_tokens, r"obs_tokens float32\(2, 12\).*expected int"),
    (_too_wide, r"obs_tokens int32\(2, 16\).*shape \(12,\).*max_observation_tokens=12"),
    (_four_tuple, r"must return \(state, obs_tokens, obs_mask, reward, done\[, error\]\), "
                  r"got tuple of 4"),
    (_int_done, r"done int32\(2,\); expected bool"),
    (_int_reward, r"reward int32\(2,\); expected float"),
])
def test_traceable_step_with_wrong_types_names_env_and_field(step_fn, match):
  env = envs.Traceable("my_sim", lambda record: jnp.zeros((), jnp.int32), step_fn,
                       (tuple(TOK.encode("</calc>")),), LIMITS)
  with pytest.raises(envs.EnvError, match=r"environment 'my_sim': step (returned )?" + match):
    _generate(env)


def test_well_formed_traceable_env_runs():
  """The control for the test above: the same env with `_ok_step` runs turns."""
  env = envs.Traceable("my_sim", lambda record: jnp.zeros((), jnp.int32), _ok_step,
                       (tuple(TOK.encode("</calc>")),), LIMITS)
  out = _generate(env)
  assert int(out.turns.min()) >= 1
  assert not np.asarray(out.generated)[np.asarray(out.mask) & ~np.asarray(out.generated)].any()


# -- host environments: checked on the host, surfacing from io_callback --------


class _Breaks:
  """The calculator's turn end; its second step breaks the contract."""
  name = "flaky_shell"
  turn_end = "</calc>"

  def __init__(self, how):
    self.how = how

  def reset(self, record):
    return 0

  def step(self, state, turn_text):
    if state + 1 < 2:
      return envs.HostStep(state + 1, "ok\n")
    return {"raises": lambda: 1 / 0,
            "not_a_str": lambda: envs.HostStep(state + 1, 42),
            "nan_reward": lambda: envs.HostStep(state + 1, "x\n", float("nan")),
            "inf_reward": lambda: envs.HostStep(state + 1, "x\n", float("inf")),
            "too_long": lambda: envs.HostStep(state + 1, "y" * 20),
            "not_a_tuple": lambda: "just text",
            "int_done": lambda: envs.HostStep(state + 1, "x\n", 0.0, 1)}[self.how]()


@pytest.mark.parametrize("how,match", [
    ("raises", "step raised ZeroDivisionError: division by zero"),
    ("not_a_str", "observation must be a str, got int"),
    ("nan_reward", "reward must be a finite number, got nan"),
    ("inf_reward", "reward must be a finite number, got inf"),
    ("too_long", "observation of 20 tokens > max_observation_tokens 12"),
    ("not_a_tuple", "step must return HostStep"),
    ("int_done", "done must be a bool, got 1"),
])
def test_broken_host_env_names_env_record_turn_and_problem(how, match):
  env = envs.host(_Breaks(how), TOK, [{}, {}], LIMITS)
  # The EnvError is raised inside io_callback; JAX re-raises it as its
  # runtime error whose text carries the original message.
  with pytest.raises(jax.errors.JaxRuntimeError) as info:
    _generate(env)
  text = str(info.value)
  assert "environment 'flaky_shell', record 0, turn 2: " + match in text, text[-1500:]


# JAX's callback error text names the class bare ("EnvError: ..."); launch
# still finds it and prints one `error: ...` line.
def test_launch_finds_the_host_env_error_behind_the_callback_error():
  env = envs.host(_Breaks("nan_reward"), TOK, [{}, {}], LIMITS)
  with pytest.raises(jax.errors.JaxRuntimeError) as info:
    _generate(env)
  found = errors.find_user_error(info.value)
  assert isinstance(found, envs.EnvError), str(info.value)[-1500:]
  assert str(found) == ("environment 'flaky_shell', record 0, turn 2: reward must be a finite "
                        "number, got nan")


def test_host_env_with_bad_turn_end_or_records():
  class NoEnd(_Breaks):
    turn_end = ""
  with pytest.raises(envs.EnvError, match="environment 'flaky_shell': turn_end must be"):
    envs.host(NoEnd("raises"), TOK, [{}], LIMITS)
  # example_index beyond the records the env was given (2 prompts, 1 record).
  with pytest.raises(jax.errors.JaxRuntimeError,
                     match="environment 'calculator': example_index 1 is outside the 1 records"):
    _generate(envs.host(envs.HostCalculator(), TOK, [{}], LIMITS))


# -- envs.from_config and config validation -----------------------------------


def _cfg(name, **kw):
  return EnvCfg(name=name, max_turns=3, turn_max_tokens=4, max_observation_tokens=12, **kw)


def test_from_config_builds_builtins_and_none_for_single_turn():
  assert envs.from_config(_cfg(""), TOK, []) is None
  calc = envs.from_config(_cfg("calculator"), TOK, [])
  assert isinstance(calc, envs.Traceable) and calc.limits == LIMITS
  host = envs.from_config(_cfg("calculator_host"), TOK, [{}])
  assert isinstance(host, envs.HostEnv) and host.name == "calculator"


def test_from_config_unknown_name():
  with pytest.raises(errors.UserInputError,
                     match=r"env 'calculater': expected one of 'calculator', 'calculator_host', "
                           r"'guess', 'tools' or path/to/file.py:function"):
    envs.from_config(_cfg("calculater"), TOK, [])
  with pytest.raises(errors.UserInputError, match=r"env '/nowhere/e.py:make': no such file"):
    envs.from_config(_cfg("/nowhere/e.py:make"), TOK, [])


def test_from_config_factory_of_the_wrong_thing(tmp_path):
  f = tmp_path / "my_envs.py"
  f.write_text("def wrong():\n  return 42\n\n"
               "class Half:\n  name = 'half'\n  def step(self, s, t): pass\n\n"
               "def half():\n  return Half()\n\n"
               "def broken():\n  raise RuntimeError('no simulator')\n\n"
               "from rankjax.envs import HostCalculator\n"
               "def good():\n  return HostCalculator()\n")
  with pytest.raises(envs.EnvError, match=rf"env '{f}:wrong' returned int: expected a host "
                                           r"environment \(name, turn_end, reset, step\)"):
    envs.from_config(_cfg(f"{f}:wrong"), TOK, [])
  with pytest.raises(envs.EnvError, match=r"returned Half: expected"):
    envs.from_config(_cfg(f"{f}:half"), TOK, [])
  with pytest.raises(errors.UserInputError, match=r"defines no function 'missing'"):
    envs.from_config(_cfg(f"{f}:missing"), TOK, [])
  made = envs.from_config(_cfg(f"{f}:good"), TOK, [{}])
  assert isinstance(made, envs.HostEnv) and made.limits == LIMITS


class _WordTokenizer:
  """A tokenizer with no `char_id` (not the built-in character one)."""
  eos_ids, pad_id = (1,), 0

  def encode(self, text, add_bos=False):
    return [2 + (ord(c) % 50) for c in text]


def test_traceable_calculator_needs_the_char_tokenizer():
  with pytest.raises(envs.EnvError, match=r"env 'calculator'.*character tokenizer.*"
                                           r"env.name='calculator_host'"):
    envs.from_config(_cfg("calculator"), _WordTokenizer(), [])
  assert isinstance(envs.from_config(_cfg("calculator_host"), _WordTokenizer(), [{}]),
                    envs.HostEnv)


@pytest.mark.parametrize("env,key,match", [
    (EnvCfg(name="calculater"), "env.name", "calculator_host"),
    (EnvCfg(name="tools"), "env.tools", "at least one"),
    (EnvCfg(name="calculator", max_turns=0), "env.max_turns", "must be > 0"),
    (EnvCfg(name="calculator", max_observation_tokens=0), "env.max_observation_tokens",
     "must be > 0"),
    (EnvCfg(name="calculator", observations="chunked"), "env.observations", "prefill"),
])
def test_config_validation_names_the_env_key(env, key, match):
  cfg = config_lib.Config(pipeline=("grpo",), env=env)
  with pytest.raises(config_lib.ConfigError, match=rf"config key '{key}': .*{match}"):
    config_lib.validate(cfg)


# -- GAE over the model's tokens only ------------------------------------------


def _np_gae_skipping(r, v, mask, gamma, lam):
  """The reverse loop over the masked positions only; 0 elsewhere."""
  adv, ret = np.zeros_like(r), np.zeros_like(r)
  for b in range(r.shape[0]):
    idx = np.flatnonzero(mask[b])
    next_v = next_a = 0.0
    for t in idx[::-1]:
      delta = r[b, t] + gamma * next_v - v[b, t]
      next_a = delta + gamma * lam * next_a
      next_v = v[b, t]
      adv[b, t], ret[b, t] = next_a, next_a + v[b, t]
  return adv, ret


def _gae_before_multiturn(rewards_bt, values_bt, mask_bt, *, gamma, lam):
  """`losses.gae` as it was before multi-turn rollouts (a recursion over
  consecutive slots, t + 1 the next slot)."""
  valid = np.asarray(mask_bt) != 0
  r = np.where(valid, rewards_bt, 0.0)
  v = np.where(valid, values_bt, 0.0)
  next_v = np.pad(v[:, 1:], ((0, 0), (0, 1)))
  delta = r + gamma * next_v - v
  adv = np.zeros_like(delta)
  running = np.zeros(delta.shape[0])
  for t in range(delta.shape[1] - 1, -1, -1):
    running = delta[:, t] + gamma * lam * running
    adv[:, t] = running
  adv = np.where(valid, adv, 0.0)
  return adv, np.where(valid, adv + v, 0.0)


def test_gae_skips_masked_positions():
  rng = np.random.default_rng(0)
  r = rng.normal(size=(4, 12)).astype(np.float32)
  v = rng.normal(size=(4, 12)).astype(np.float32)
  # Model turns with observation gaps between them, as a multi-turn row.
  mask = np.zeros((4, 12), bool)
  mask[0, [0, 1, 2, 6, 7, 10]] = True
  mask[1, [3, 4, 9]] = True
  mask[2, :12] = True
  mask[3, [11]] = True
  gae = jax.jit(functools.partial(losses.gae, gamma=0.9, lam=0.8))
  adv, ret = gae(r, v, mask)
  exp_adv, exp_ret = _np_gae_skipping(r.astype(np.float64), v.astype(np.float64), mask, 0.9, 0.8)
  np.testing.assert_allclose(np.asarray(adv), exp_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), exp_ret, rtol=1e-5, atol=1e-5)
  # The compacted sequence (the gaps squeezed out) gives the same numbers.
  for b in range(4):
    idx = np.flatnonzero(mask[b])
    ones = np.ones((1, len(idx)), bool)
    a_c, r_c = losses.gae(r[b:b + 1, idx], v[b:b + 1, idx], ones, gamma=0.9, lam=0.8)
    np.testing.assert_allclose(np.asarray(adv)[b, idx], np.asarray(a_c)[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret)[b, idx], np.asarray(r_c)[0], rtol=1e-6, atol=1e-6)
  # Values and rewards at masked positions do not matter: the same
  # compiled program gives bit-identical results (eager op-by-op execution
  # may round differently from the fused program).
  r2, v2 = np.where(mask, r, 1e3), np.where(mask, v, -1e3)
  adv2, ret2 = gae(r2, v2, mask)
  np.testing.assert_array_equal(np.asarray(adv2), np.asarray(adv))
  np.testing.assert_array_equal(np.asarray(ret2), np.asarray(ret))


def test_gae_prefix_mask_is_unchanged():
  rng = np.random.default_rng(1)
  r = rng.normal(size=(3, 10)).astype(np.float32)
  v = rng.normal(size=(3, 10)).astype(np.float32)
  mask = np.arange(10)[None] < np.array([[10], [6], [1]])
  adv, ret = losses.gae(r, v, mask, gamma=0.99, lam=0.95)
  old_adv, old_ret = _gae_before_multiturn(r.astype(np.float64), v.astype(np.float64), mask,
                                           gamma=0.99, lam=0.95)
  np.testing.assert_allclose(np.asarray(adv), old_adv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ret), old_ret, rtol=1e-5, atol=1e-6)
