"""The listwise step: on pairs it is DPO, padded candidates are inert, its
batch checks name the keys, it accumulates, and the `listwise` stage runs
end to end; plus the DPO stage's reference-free loss types."""

import dataclasses
import functools
import json

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from rankjax import data, models, run, train
from rankjax.config import Config, DataCfg, DPOCfg, ListwiseCfg, ModelCfg, OptimCfg
from rankjax.errors import UserInputError
from rankjax.tokenizer import CharTokenizer
from rankjax.train import _steps
from train_helpers import host, make_state

TOK = CharTokenizer()
SEQ = ("tokens", "loss_mask", "segment_ids", "positions")


def tiny_model(seed=0):
  return models.create(models.ModelConfig(
      vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_layers=1,
      num_heads=2, num_kv_heads=1, head_dim=16, bos_token_id=TOK.bos_id,
      eos_token_ids=tuple(TOK.eos_ids), pad_token_id=TOK.pad_id), seed=seed)


def batches(rows, **kw):
  kw = {"global_batch_size": 4, "max_length": 16, "shuffle": False, **kw}
  return iter(data.build_pipeline(data.RecordSource(rows), TOK, **kw))


def pref_rows(n=8):
  return [{"prompt": f"{a}+{a}=", "chosen": str(2 * a), "rejected": str(2 * a + 11)}
          for a in range(n)]


RANKED_ROWS = [
    {"prompt": "1+1=", "completions": ["2", "3", "12"], "scores": [1, 0.5, 0]},
    {"prompt": "2+3=", "completions": ["5", "6"], "scores": [1, 0]},
    {"prompt": "4+4=", "completions": ["8", "9", "7", "80"], "scores": [2, 1, 1, 0]},
    {"prompt": "9+1=", "completions": ["10", "1"], "scores": [0, 1]},
]


@functools.cache
def updater(step, hp, accum_steps=1):
  """jit: (state, batch) -> (loss, metrics, grads, new state, step metrics):
  `step`'s objective's gradients and `step` itself (one compile per step,
  hp and accum_steps; not donated, the tests reuse the input state)."""
  objective = {train.dpo_step: train.dpo_objective,
               train.listwise_step: train.listwise_objective}[step]

  def f(state, batch):
    loss_fn = objective(state, batch, hp, accum_steps=accum_steps)
    loss, metrics, grads = train.compute_grads(state, batch, loss_fn, accum_steps)
    return (loss, metrics, grads, *step(state, batch, hp=hp, accum_steps=accum_steps))
  return jax.jit(f)


DPO = DPOCfg(beta=0.5, loss_type=("sigmoid",))
ALL_TYPES = ListwiseCfg(beta=0.5, loss_type=("plackett_luce", "lipo_lambda", "softmax"))


@pytest.fixture(scope="module")
def moved():
  """(state, preference batch): the policy one DPO step away from its
  reference (at the reference itself every log-ratio would be 0), with
  non-zero optimizer moments."""
  state, _, _ = make_state(tiny_model(), with_reference=True, lr=1e-2)
  it = batches(pref_rows())
  state = updater(train.dpo_step, DPO)(state, next(it))[3]
  return state, next(it)


def _moved(a, b):
  """Whether the parameters differ."""
  return not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(host(a)),
                                                    jax.tree.leaves(host(b))))


# -- (a) on pairs, listwise is DPO ---------------------------------------------------


@pytest.mark.parametrize("hp", [
    ListwiseCfg(beta=0.5, loss_type=("plackett_luce",)),
    ListwiseCfg(beta=0.5, loss_type=("softmax",), target_temperature=0.0),
], ids=["plackett_luce", "softmax_t0"])
def test_on_pairs_listwise_equals_sigmoid_dpo(moved, hp):
  state, batch = moved
  d_loss, d_metrics, d_grads, d_state, d_step = host(updater(train.dpo_step, DPO)(state, batch))
  l_loss, l_metrics, l_grads, l_state, l_step = host(
      updater(train.listwise_step, hp)(state, batch))
  assert abs(d_loss - np.log(2)) > 1e-3  # the policy moved: a real test
  np.testing.assert_allclose(l_loss, d_loss, atol=1e-6)
  np.testing.assert_allclose(l_metrics["rewards/accuracies"],
                             d_metrics["rewards/accuracies"], atol=1e-6)
  chex.assert_trees_all_close(l_grads, d_grads, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(l_step["loss"], d_step["loss"], atol=1e-6)
  np.testing.assert_allclose(l_step["grad_norm"], d_step["grad_norm"], rtol=1e-5)
  assert l_step["nonfinite"] == d_step["nonfinite"] == 0
  chex.assert_trees_all_close(l_state.params, d_state.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(l_state.opt_state, d_state.opt_state, rtol=1e-5, atol=1e-7)
  assert _moved(l_state.params, state.params)


def test_as_lists_of_a_preference_batch(moved):
  _, batch = moved
  lists = host(train.as_lists(batch))
  for k in SEQ:
    np.testing.assert_array_equal(lists[k][:, 0], batch[f"chosen_{k}"])
    np.testing.assert_array_equal(lists[k][:, 1], batch[f"rejected_{k}"])
  np.testing.assert_array_equal(lists["scores"], [[1.0, 0.0]] * 4)
  np.testing.assert_array_equal(lists["list_mask"], [[1, 1]] * 4)


# -- (b) padded candidates ----------------------------------------------------------


def test_padded_candidates_are_inert(moved):
  state = moved[0]
  batch = next(batches(RANKED_ROWS, list_size=5))
  assert batch["tokens"].shape[:2] == (4, 5)
  fn = updater(train.listwise_step, ALL_TYPES)
  loss, metrics, grads, _, step_metrics = host(fn(state, batch))
  assert np.isfinite(loss) and loss > 0 and step_metrics["nonfinite"] == 0
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert metrics["informative_lists"] == 1.0
  # Fill every padded slot with a real-looking candidate: nothing changes.
  garbage = {k: v.copy() for k, v in batch.items()}
  pad = batch["list_mask"] == 0
  rng = np.random.RandomState(0)
  garbage["tokens"][pad] = rng.randint(3, TOK.vocab_size, garbage["tokens"][pad].shape)
  garbage["loss_mask"][pad] = 1
  garbage["segment_ids"][pad] = 1
  garbage["positions"][pad] = np.arange(batch["tokens"].shape[-1])
  loss2, _, grads2, _, _ = host(fn(state, garbage))
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  chex.assert_trees_all_close(grads2, grads, rtol=1e-5, atol=1e-7)
  # Nor does the number of padded slots matter (K=5 vs the longest list, 4).
  tight = next(batches(RANKED_ROWS, list_size=0))
  assert tight["tokens"].shape[:2] == (4, 4)
  np.testing.assert_allclose(host(fn(state, tight))[0], loss, rtol=1e-6)


# -- (c) batch checks ---------------------------------------------------------------


def _ranked_batch():
  return {k: np.asarray(v) for k, v in next(batches(RANKED_ROWS, list_size=4)).items()}


@pytest.mark.parametrize("bad,match", [
    (lambda b: {k: v for k, v in b.items() if k != "scores"}, r"missing \['scores'\]"),
    (lambda b: {k: v for k, v in b.items() if k not in ("list_mask", "loss_mask")},
     r"missing \['loss_mask', 'list_mask'\]"),
    (lambda b: dict(b, list_mask=b["list_mask"][:, :3]), "'list_mask': \\(4, 3\\)"),
    (lambda b: dict(b, scores=b["scores"][:, :, None]), "'scores'"),
    (lambda b: dict(b, loss_mask=b["loss_mask"][:, :, :-1]), "'loss_mask'"),
    (lambda b: dict(b, positions=b["positions"][:3]), "'positions'"),
    (lambda b: {**{k: v[:, 0] for k, v in b.items() if k in SEQ},
                "scores": b["scores"], "list_mask": b["list_mask"]}, r"\[B, K, T\]"),
])
def test_check_lists_names_the_key(bad, match):
  with pytest.raises(ValueError, match=match):
    train.check_lists(bad(_ranked_batch()))


def test_check_lists_accum_and_pairs():
  batch = _ranked_batch()
  train.check_lists(batch)
  train.check_lists(batch, accum_steps=2)
  with pytest.raises(ValueError, match="grad_accum_steps=3"):
    train.check_lists(batch, accum_steps=3)
  pairs = {k: np.asarray(v) for k, v in next(batches(pref_rows())).items()}
  train.check_lists(pairs)
  pairs["rejected_tokens"] = np.pad(pairs["rejected_tokens"], ((0, 0), (0, 2)))
  with pytest.raises(ValueError, match="one shape"):
    train.check_lists(pairs)


# -- (d) gradient accumulation ------------------------------------------------------


def test_grad_accumulation_on_ranked_lists(moved):
  # Every list is informative, two per micro-batch: the mean of the two
  # micro-batch means is the full-batch mean.
  state = moved[0]
  batch = next(batches(RANKED_ROWS, list_size=0))
  loss1, _, g1, s1, _ = host(updater(train.listwise_step, ALL_TYPES)(state, batch))
  loss2, _, g2, s2, m2 = host(updater(train.listwise_step, ALL_TYPES, 2)(state, batch))
  np.testing.assert_allclose(loss2, loss1, rtol=1e-6)
  chex.assert_trees_all_close(g2, g1, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m2["loss"], loss1, rtol=1e-6)
  assert m2["nonfinite"] == 0 and int(s2.step) == int(state.step) + 1
  chex.assert_trees_all_close(s2.params, s1.params, rtol=1e-5, atol=1e-6)


# -- (e) reference-free loss types ------------------------------------------------------


def test_reference_needs():
  dpo, lw = train.OFFLINE["dpo"].reference, train.OFFLINE["listwise"].reference
  for types in (("simpo",), ("cpo",), ("orpo",), ("simpo", "cpo")):
    assert not dpo(DPOCfg(loss_type=types)), types
    assert _steps.dpo_reference_free(DPOCfg(loss_type=types))
  assert dpo(DPOCfg(loss_type=("sigmoid",)))
  assert dpo(DPOCfg(loss_type=("sigmoid", "simpo")))  # one type needs it
  assert not dpo(DPOCfg(loss_type=("sigmoid",), reference_free=True))
  assert lw(ListwiseCfg()) and not lw(ListwiseCfg(reference_free=True))


def test_reference_free_steps_run_without_reference():
  state, _, _ = make_state(tiny_model(), with_reference=False, lr=1e-2)
  assert state.ref is None
  batch = next(batches(pref_rows()))
  hp = DPOCfg(beta=0.5, loss_type=("simpo",), simpo_gamma=0.3)
  new, metrics = host(jax.jit(functools.partial(train.dpo_step, hp=hp))(state, batch))
  assert np.isfinite(metrics["loss"]) and metrics["nonfinite"] == 0
  assert "loss/simpo" in metrics
  assert _moved(new.params, state.params)
  # A type that needs the reference refuses such a state, naming why.
  with pytest.raises(ValueError, match="no reference"):
    train.dpo_step(state, batch, hp=DPO)
  with pytest.raises(ValueError, match="no reference"):
    train.listwise_step(state, batch, hp=ListwiseCfg())


# -- (f) the listwise stage -------------------------------------------------------------


TINY = Config(
    name="listwise_test", pipeline=("listwise",), log_every=1, eval_every=2,
    model=ModelCfg(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                   intermediate_size=64),
    data=DataCfg(source="arithmetic", batch_size=4, max_length=24, max_prompt_length=16,
                 num_train=16, num_eval=8),
    optim=OptimCfg(warmup_steps=0),
    listwise=ListwiseCfg(steps=2, list_size=3))


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_listwise_stage_on_the_arithmetic_task(tmp_path):
  r = run.execute(TINY, tmp_path)
  rows = [m for m in _metrics(tmp_path) if m["stage"] == "listwise"]
  train_rows = [m for m in rows if "loss" in m]
  assert [m["step"] for m in train_rows] == [1, 2]
  for m in train_rows:
    assert np.isfinite(m["loss"]) and m["nonfinite"] == 0
    assert "rewards/accuracies" in m and m["informative_lists"] == 1.0
    assert m["num_target_tokens"] > 0
  assert any("eval/loss" in m for m in rows)
  summary = json.loads((tmp_path / "summary.json").read_text())["listwise"]
  assert summary["steps"] == 2 and summary["data"]["skipped"] == {}
  model = models.from_pretrained(tmp_path / "export")
  out = np.asarray(model(np.array([TOK.encode("1+1=", add_bos=True)], np.int32)))
  assert np.all(np.isfinite(out))
  # run.model is the trained policy, not the initial one.
  init = run.build_model(TINY, TOK)
  trained = nnx.to_pure_dict(nnx.state(r.model, nnx.Param))["lm_head"]
  assert not np.allclose(np.asarray(trained), np.asarray(
      nnx.to_pure_dict(nnx.state(init, nnx.Param))["lm_head"]))


def test_listwise_stage_on_user_ranked_jsonl(tmp_path):
  rows = [{"prompt": f"{a}+1=", "completions": [str(a + 1), str(a + 2), str(a + 9)],
           "scores": [1.0, 0.5, 0.0]} for a in range(8)]
  rows[3]["completions"].append("x")   # 4 > list_size: a bad row, skipped
  rows[3]["scores"].append(-1)
  path = _write_jsonl(tmp_path / "ranked.jsonl", rows)
  cfg = dataclasses.replace(
      TINY, eval_every=0,
      data=dataclasses.replace(TINY.data, source="jsonl", path=path, on_bad_row="skip"))
  run.execute(cfg, tmp_path / "run")
  train_rows = [m for m in _metrics(tmp_path / "run") if "loss" in m]
  assert [m["step"] for m in train_rows] == [1, 2]
  assert all(np.isfinite(m["loss"]) for m in train_rows)
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())["listwise"]
  assert summary["data"]["skipped"] == {"too_long": 1}


def test_listwise_stage_rejects_prompt_completion_rows(tmp_path):
  path = _write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "1+1=", "completion": "2"}] * 8)
  cfg = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, source="jsonl",
                                                           path=path))
  with pytest.raises(UserInputError) as e:
    run.execute(cfg, tmp_path / "run")
  msg = str(e.value)
  assert "stage 'listwise'" in msg and "ranked" in msg and "prompt_completion" in msg, msg
