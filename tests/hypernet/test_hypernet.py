"""Text-to-LoRA: the task family, the network and its adapters (shapes, a
fresh network is the base, adapted == merged), the loss against the plain
SFT loss under each generated adapter, training touches the network only,
save/load, batches and their resume, the router, config errors, sharded ==
single device, and the stage through `python -m rankjax.launch`."""

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypernet_helpers import (ALPHA, RANK, TARGETS, TOK, VARIANTS, base_model, nonzero_b_heads,
                              task_batches, tiny_hypernet)
from multidevice import run_on_8_devices

from rankjax import config as config_lib, hypernet, launch, models, parallel, train
from rankjax.config import OptimCfg
from rankjax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[2]
PROMPTS = np.asarray([[1, 20, 21, 22, 23, 24], [1, 30, 31, 32, 33, 34]], np.int32)


def _logits(model):
  return np.asarray(model(jnp.asarray(PROMPTS)), np.float32)


# -- the task family -----------------------------------------------------------


def test_variants_parse_and_describe():
  assert len(hypernet.all_variants()) == len(hypernet.OPS) * len(hypernet.FORMATS) * len(
      hypernet.DIGITS) == 12
  v = hypernet.parse_variant("sub_cot_2")
  assert (v.op, v.answer_format, v.digits, v.name, v.cot) == ("sub", "cot", 2, "sub_cot_2", True)
  for bad in ("sub_cot", "div_bare_1", "add_bare_3", "add-bare-1"):
    with pytest.raises(UserInputError, match="my.key"):
      hypernet.parse_variant(bad, "my.key")
  texts = {v.name: hypernet.descriptions(v) for v in hypernet.all_variants()}
  for name, ds in texts.items():
    assert len(ds) == 18 and len(set(ds)) == 18, name
    assert ds[0] == hypernet.description(hypernet.parse_variant(name))
    # Printable ASCII: the character tokenizer reads every description.
    assert all(all(32 <= ord(c) < 127 for c in d) for d in ds), name
  # No wording describes two variants.
  flat = [d for ds in texts.values() for d in ds]
  assert len(flat) == len(set(flat))


def test_variant_tasks_differ_in_format_only_by_completion():
  bare = hypernet.make_task(hypernet.parse_variant("add_bare_1"), seed=0, num_train=8, num_eval=2)
  cot = hypernet.make_task(hypernet.parse_variant("add_cot_1"), seed=0, num_train=8, num_eval=2)
  rb, rc = hypernet.sft_rows(bare), hypernet.sft_rows(cot)
  assert len(rb) == len(rc) == 8 and set(rb[0]) == {"prompt", "completion"}
  # The prompt says nothing about the format; only the description does.
  assert all(r["prompt"].endswith("=") for r in rb + rc)
  assert all("answer:" in r["completion"] for r in rc)
  assert not any("answer:" in r["completion"] for r in rb)
  for r in rb:
    a, b = r["prompt"][:-1].split("+")
    assert r["completion"] == str(int(a) + int(b))


# -- the network and its adapters ------------------------------------------------


def test_adapter_shapes_match_the_lora_view():
  hn = tiny_hypernet()
  view = hypernet.lora_view(hn.base, RANK, ALPHA, TARGETS)
  ds = [hypernet.description(v) for v in VARIANTS]
  adapters = hn.adapters(ds)
  assert set(adapters) == {f"{t}_lora_{ab}" for t in TARGETS for ab in ("a", "b")}
  for name, value in adapters.items():
    assert value.shape == (len(ds), *getattr(view.layers, name).shape), name
    assert value.dtype == jnp.float32
  # A's head starts at the LoRA init (plus small per-task deviations), B's at zero.
  assert np.all(np.asarray(adapters["q_lora_b"]) == 0)
  assert np.any(np.asarray(adapters["q_lora_a"]) != 0)
  with pytest.raises(ValueError, match="q_lora_a: shape"):
    hypernet.adapted(hn.view, {**hypernet.one_task(adapters, 0),
                               "q_lora_a": adapters["q_lora_a"][0, :, :1]})


def test_fresh_hypernet_is_the_base_and_adapters_differ_per_task():
  hn = tiny_hypernet()
  d0, d1 = (hypernet.description(v) for v in VARIANTS[:2])
  np.testing.assert_array_equal(_logits(hn.model(d0)), _logits(hn.base))
  nonzero_b_heads(hn)
  a0, a1 = _logits(hn.model(d0)), _logits(hn.model(d1))
  assert np.abs(a0 - _logits(hn.base)).max() > 1e-3
  assert np.abs(a0 - a1).max() > 1e-4  # the description changes the adapter
  # The merged model computes what the LoRA view with the adapter computes.
  np.testing.assert_allclose(a0, _logits(hn.adapted(d0)), atol=2e-5, rtol=1e-5)
  # The base is left untouched.
  np.testing.assert_array_equal(_logits(hn.base), _logits(base_model()))


def test_describe_pools_text_not_bos_or_padding():
  base = base_model()
  short, long_ = "Add two numbers.", "Add two numbers of one digit. Reply with the number only."
  both = hypernet.describe(base, TOK, [short, long_])
  alone = hypernet.describe(base, TOK, [short])
  # Padding (a longer neighbour) changes nothing.
  np.testing.assert_allclose(both[0], alone[0], atol=1e-5)
  ids = TOK.encode(short, add_bos=True)
  hidden = np.asarray(base.hidden_states(jnp.asarray([ids])), np.float32)[0]
  np.testing.assert_allclose(alone[0], hidden[1:].mean(0), atol=1e-5)


def test_learned_embedding_codes():
  hn = tiny_hypernet(embedding="learned")
  known = hn.train_descriptions[1][0]
  x = hn.inputs([known, "a task never trained on"])
  np.testing.assert_array_equal(x[0], np.eye(len(VARIANTS))[1])
  np.testing.assert_allclose(x[1], np.full(len(VARIANTS), 1 / len(VARIANTS)))


def test_save_load_round_trip(tmp_path):
  hn = tiny_hypernet()
  nonzero_b_heads(hn)
  ds = [hypernet.description(v) for v in VARIANTS]
  hn.save(tmp_path / "hn")
  loaded = hypernet.Hypernet.load(tmp_path / "hn", hn.base, TOK)
  assert loaded.embedding == hn.embedding and loaded.train_descriptions == hn.train_descriptions
  a, b = hn.adapters(ds), loaded.adapters(ds)
  for name in a:
    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
  with pytest.raises(UserInputError, match="hypernet.json"):
    hypernet.Hypernet.load(tmp_path / "nothing", hn.base, TOK)


# -- training ----------------------------------------------------------------------


def test_loss_is_the_mean_sft_loss_under_each_tasks_adapter():
  hn = tiny_hypernet()
  nonzero_b_heads(hn)
  batch = next(task_batches(hn, tasks_per_step=2, rows_per_task=3))
  assert batch["tokens"].shape == (6, 32) and batch["embedding"].shape[0] == 2
  model = hypernet.Conditioned(hn.view, hn.net)
  loss, metrics = hypernet.hypernet_loss_fn(model, jax.tree.map(jnp.asarray, batch))
  adapters = hn.net(jnp.asarray(batch["embedding"]))
  expected, tokens = [], 0
  for t in range(2):
    rows = {k: jnp.asarray(v[3 * t:3 * t + 3]) for k, v in batch.items() if k != "embedding"}
    lt, mt = train.sft_loss_fn(hypernet.adapted(hn.view, hypernet.one_task(adapters, t)), rows)
    expected.append(float(lt))
    tokens += int(mt["num_target_tokens"])
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)
  assert int(metrics["num_target_tokens"]) == tokens
  with pytest.raises(ValueError, match="do not split into 4 tasks"):
    hypernet.hypernet_loss_fn(model, {**jax.tree.map(jnp.asarray, batch),
                                      "embedding": jnp.zeros((4, batch["embedding"].shape[1]))})


def test_training_updates_the_network_only_and_lowers_the_loss():
  hn = tiny_hypernet()
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  tx = train.make_optimizer(OptimCfg(learning_rate=3e-3, warmup_steps=0), 30)
  state, sh = hypernet.create_state(hn.view, hn.net, tx, mesh)
  frozen_before = jax.device_get(state.frozen)
  assert set(state.params) == {"net"}
  # Only the hypernetwork's parameters train: no base weight, no LoRA placeholder.
  assert "base" not in state.params and "base" in state.frozen
  step = hypernet.jit_hypernet_step(sh, mesh)
  batch = train.put_batch(next(task_batches(hn, tasks_per_step=3, rows_per_task=4)),
                          hypernet.batch_shardings(mesh))
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.frozen), frozen_before)


def test_batches_are_task_major_and_resume():
  hn = tiny_hypernet()
  batches = task_batches(hn, tasks_per_step=2, rows_per_task=4, seed=3)
  next(batches)
  saved = batches.get_state()
  b2, b3 = next(batches), next(batches)
  again = task_batches(hn, tasks_per_step=2, rows_per_task=4, seed=3)
  again.set_state(saved)
  for want in (b2, b3):
    got = next(again)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # Each task's rows hold its own problems: the embedding row t is one of
  # task t's wordings, and rows [4t, 4t + 4) are that task's examples.
  inputs = [hn.inputs(w) for w in hn.train_descriptions]
  for t in range(2):
    k = next(i for i, x in enumerate(inputs) if any(np.array_equal(b2["embedding"][t], r)
                                                    for r in x))
    examples = task_batches(hn, tasks_per_step=1, rows_per_task=1).examples[k]
    known = {tuple(e["tokens"]) for e in examples}
    for row in b2["tokens"][4 * t:4 * t + 4]:
      assert any(tuple(row[:len(e)]) == e for e in known), t
  with pytest.raises(UserInputError, match="tasks_per_step=4"):
    task_batches(hn, tasks_per_step=4, rows_per_task=1)


def test_tokenize_rows_names_max_length():
  with pytest.raises(UserInputError, match="data.max_length=4"):
    hypernet.tokenize_rows([{"prompt": "12+34=", "completion": "46"}], TOK, 4)


def test_sharded_steps_match_single_device():
  r = run_on_8_devices(os.path.join(os.path.dirname(__file__), "sharded_check.py"))
  assert r["params"] < 1e-5 and r["losses"] < 1e-5, r
  # The generated adapters' heads are laid out like the adapters themselves.
  assert "fsdp" in r["head_spec"] or "tensor" in r["head_spec"], r


# -- the router --------------------------------------------------------------------


def _entries():
  family = {v.name: hypernet.make_task(v, seed=0, num_train=4, num_eval=4) for v in VARIANTS}
  return hypernet.registry(family, n=3), family


def test_registry_pipelines():
  entries, _ = _entries()
  by_name = {e.name: e for e in entries}
  assert by_name["add_bare_1"].pipeline == "greedy" and by_name["add_bare_1"].n == 1
  assert by_name["add_cot_1"].pipeline == "vote" and by_name["add_cot_1"].n == 3
  two = hypernet.registry({"add_bare_2": hypernet.make_task(
      hypernet.parse_variant("add_bare_2"), seed=0, num_train=2, num_eval=2)}, n=5)
  assert (two[0].pipeline, two[0].n) == ("best_of_n", 5)
  with pytest.raises(UserInputError, match="pipeline 'beam'"):
    hypernet.Entry(name="x", description="d", pipeline="beam", task=entries[0].task)
  with pytest.raises(UserInputError, match="n must be >= 1"):
    hypernet.Entry(name="x", description="d", pipeline="vote", task=entries[0].task, n=0)


def test_router_picks_the_entry_and_answers_with_its_pipeline():
  hn = tiny_hypernet()
  nonzero_b_heads(hn)
  entries, family = _entries()
  router = hypernet.Router(hn, entries, max_new_tokens=6, temperature=1.0)
  for e in entries:
    sims = router.similarities(e.description)
    assert int(np.argmax(sims)) == entries.index(e)
    np.testing.assert_allclose(sims.max(), 1.0, atol=1e-5)
  for e in entries:
    routed = router.route(e.description)
    assert routed.entry is e
    # The routed model carries the description's own generated adapter.
    np.testing.assert_allclose(_logits(routed.model), _logits(hn.model(e.description)),
                               atol=1e-6)
    problems = family[e.name].eval_records(3)
    texts = routed.answer(problems, rng=jax.random.key(0))
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
  with pytest.raises(UserInputError, match="at least one"):
    hypernet.Router(hn, [])


def test_router_best_of_n_and_vote_choose_by_the_verifier_and_the_answer(monkeypatch):
  entries, family = _entries()
  task = family["add_cot_1"]
  problems = task.eval_records(2)
  right = [f"x\nanswer: {p['answer']}" for p in problems]
  groups = [["answer: 999", right[0], right[0]], [right[1], "answer: 998", "answer: 998"]]
  monkeypatch.setattr(hypernet.Routed, "_sample", lambda self, probs, n, temp, rng: groups)
  vote = hypernet.Routed(entry=dataclasses.replace(entries[1], pipeline="vote"), similarity=1.0,
                         model=None, tokenizer=TOK)
  assert vote.answer(problems) == [right[0], "answer: 998"]
  best = hypernet.Routed(entry=dataclasses.replace(entries[1], pipeline="best_of_n"),
                         similarity=1.0, model=None, tokenizer=TOK)
  assert best.answer(problems) == right


# -- config and the stage ------------------------------------------------------------


@pytest.mark.parametrize("override,key", [
    ({"train_variants": ("add_bare_1", "add_bar_2")}, "hypernet.train_variants"),
    ({"heldout_variants": ()}, "hypernet.heldout_variants"),
    ({"heldout_variants": ("add_bare_1",)}, "hypernet.heldout_variants"),
    ({"tasks_per_step": 11}, "hypernet.tasks_per_step"),
    ({"targets": ("q", "w")}, "hypernet.targets"),
    ({"rank": 0}, "hypernet.rank"),
])
def test_config_errors_name_the_key(override, key):
  cfg = config_lib.Config()
  bad = dataclasses.replace(cfg, hypernet=dataclasses.replace(cfg.hypernet, **override))
  with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
    config_lib.validate(bad)


TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.data.batch_size=8", "--config.log_every=1",
        "--config.hypernet.base_steps=2", "--config.hypernet.steps=2",
        "--config.hypernet.hidden=8", "--config.hypernet.tasks_per_step=2",
        "--config.hypernet.rows_per_task=2", "--config.hypernet.num_train=8",
        "--config.hypernet.num_eval=2", "--config.sample.max_new_tokens=8",
        "--config.eval.num_samples=2",
        "--config.hypernet.train_variants=add_bare_1,add_cot_1,sub_bare_1",
        "--config.hypernet.heldout_variants=sub_cot_1"]


def test_stage_through_launch(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  argv = ["--config", "configs/hypernet_arith.py", "--workdir", str(tmp_path), *TINY]
  assert launch.main(argv) == 0
  s = json.loads((tmp_path / "summary.json").read_text())["hypernet"]
  assert set(s["table"]) == set(hypernet.ARMS)
  assert all(set(t) == {"sub_cot_1"} for t in s["table"].values())
  assert all(0.0 <= x <= 1.0 for t in s["table"].values() for x in t.values())
  assert s["train"]["steps"] == 2 and s["heldout"] == ["sub_cot_1"]
  assert s["routing"]["sub_cot_1"]["routed_to"] in ("add_bare_1", "add_cot_1", "sub_bare_1",
                                                    "sub_cot_1")
  # The held-out variant's adapter, merged, is a checkpoint the model loader reads.
  exported = pathlib.Path(s["export"]["sub_cot_1"])
  merged = models.from_pretrained(exported)
  base = models.from_pretrained(pathlib.Path(s["export_base"]))
  hn = hypernet.Hypernet.load(tmp_path / "hypernet", base, TOK)
  want = hn.model(hypernet.description(hypernet.parse_variant("sub_cot_1")))
  np.testing.assert_allclose(_logits(merged), _logits(want), atol=1e-4)
  assert not models.lora_targets(merged)
