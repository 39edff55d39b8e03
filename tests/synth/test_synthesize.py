"""The "synthesize" stage: the filters one by one (golden cases), seeds
and their errors, a round with scripted proposals (every filter, provenance,
the pool growing), resume without duplicated rows, and the whole stage
through `python -m rankjax.launch` with a tiny model."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from rankjax import config as config_lib, launch, synth
from rankjax.data import tasks
from rankjax.data.tasks import arithmetic
from rankjax.errors import UserInputError
from rankjax.synth import _stage
from rankjax.tokenizer import CharTokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]


def _cfg(**synth_kw):
  return config_lib.Config(synth=config_lib.SynthCfg(**synth_kw))


def _task(n=8):
  return arithmetic.Arithmetic(arithmetic.ArithmeticTask(ops=("add",), max_digits=2),
                               num_train=n, num_eval=4)


def test_arithmetic_reference_evaluates_the_expression():
  assert arithmetic.reference_answer("12+34=") == {"answer": "46"}
  assert arithmetic.reference_answer("7-9=") == {"answer": "-2"}
  assert arithmetic.reference_answer("3*40=") == {"answer": "120"}
  for bad in ("012+3=", "1+2", "1+-2=", "a+b=", "1/2=", "", None, "1+2=3"):
    assert arithmetic.reference_answer(bad) is None, bad


def test_proposal_format_round_trip():
  # The default rendering: one JSON object per line.
  user = tasks.FileTask("unused.jsonl")
  fields = ("prompt", "completion")
  shown = [{"prompt": "1+2=", "completion": "3", "answer": "3"},
           {"prompt": "4+5=", "completion": "9", "answer": "9"}]
  text = synth.proposal_text("Problems:", shown, fields, user)
  assert text == ('Problems:\n{"prompt": "1+2=", "completion": "3"}\n'
                  '{"prompt": "4+5=", "completion": "9"}\n')
  assert synth.parse_proposal('{"prompt": "7+1=", "completion": "8"}\ntrailing', fields,
                              user) == {"prompt": "7+1=", "completion": "8"}
  for bad in ('{"prompt": "7+1="}', '{"prompt": "", "completion": "8"}', "[1, 2]",
              '{"prompt": 7, "completion": "8"}', 'not json', '{"prompt": "7+1=", "compl'):
    assert synth.parse_proposal(bad, fields, user) is None, bad
  # Arithmetic writes its fields joined by a space.
  arith, fields = _task(), ("prompt", "expression")
  shown = [{"prompt": "1+2=", "expression": "1+2"}, {"prompt": "40-5=", "expression": "40-5"}]
  assert synth.proposal_text("", shown, fields, arith) == "1+2= 1+2\n40-5= 40-5\n"
  assert synth.parse_proposal("7+1= 7+1\n9", fields, arith) == {"prompt": "7+1=",
                                                                  "expression": "7+1"}
  # ... and reads it back with the space left out, as small models write it.
  assert synth.parse_proposal("7+1=7+1", fields, arith) == {"prompt": "7+1=", "expression": "7+1"}
  for bad in ("7+1=", "7+1= 7+1 x", "7+1=  7+1", " ", ""):
    assert synth.parse_proposal(bad, fields, arith) is None, bad


def test_fields_follow_what_the_task_can_check():
  seeds = [{"prompt": "1+2=", "completion": "3", "answer": "3"}]
  # Arithmetic proposals state the expression that solves the problem.
  assert synth.proposal_fields("verified", seeds, _task()) == ("prompt", "expression")
  assert synth.proposal_fields("self_instruct", seeds, _task()) == ("prompt",)
  # A file task computes no reference: the proposal states its own answer.
  user = tasks.FileTask("unused.jsonl", verifier=lambda t, r: float(t == r["answer"]))
  assert synth.proposal_fields("verified", seeds, user) == ("prompt", "completion", "answer")


@pytest.mark.parametrize("record, expect", [
    (None, "malformed"),
    ({"prompt": "1+2=" * 40, "completion": "3"}, "length"),
    ({"prompt": "1 + 2 =", "completion": "3"}, "format"),
    ({"prompt": "1+2=", "completion": "\u00e9"}, "format"),        # not in the vocabulary
    ({"prompt": "55+5=", "completion": "60"}, "held_out"),         # an evaluation problem
    ({"prompt": "12+34=", "completion": "46"}, "duplicate"),
    ({"prompt": "12+35=", "completion": "47"}, "similar"),
    ({"prompt": "98+7=", "completion": "105"}, None),
])
def test_form_filters(record, expect):
  pool = _stage.Pool.of(["seed-0"], [{"prompt": "12+34=", "completion": "46"}], "chars",
                        held_out=["55+5=", [{"role": "user", "content": "chat prompts too"}]])
  cfg = _cfg(max_chars=20, pattern=r"[0-9]+[-+*][0-9]+=", rouge_tokens="chars", novelty=0.8)
  reason, score = synth.check_form(record, pool, cfg, _task(), CharTokenizer())
  assert reason == expect
  if expect == "similar":
    assert score == pytest.approx(5 / 6)


def _seed_file(tmp_path, rows, name="seeds.jsonl"):
  path = tmp_path / name
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def test_seeds_and_their_errors(tmp_path):
  good = _seed_file(tmp_path, [{"prompt": "1+2=", "completion": "3"}] * 3)
  assert len(synth.read_seeds(_cfg(seed_path=good), _task())) == 3
  assert len(synth.read_seeds(_cfg(seed_path=good, num_seeds=2), _task())) == 2
  assert len(synth.read_seeds(_cfg(), _task(5))) == 5
  with pytest.raises(UserInputError, match="seed pool is empty"):
    synth.read_seeds(_cfg(seed_path=_seed_file(tmp_path, [], "empty.jsonl")), _task())
  with pytest.raises(UserInputError, match="seed pool is empty"):
    synth.read_seeds(_cfg(), _task(0))
  no_completion = _seed_file(tmp_path, [{"prompt": "1+2=", "completion": "3"}, {"prompt": "x"}],
                             "half.jsonl")
  with pytest.raises(UserInputError, match=r"half.jsonl:2: field 'completion'"):
    synth.read_seeds(_cfg(seed_path=no_completion), _task())
  # Self-Instruct seeds need prompts only.
  assert len(synth.read_seeds(_cfg(seed_path=no_completion, method="self_instruct"),
                              _task())) == 2
  broken = _seed_file(tmp_path, [{"prompt": "1+2=", "completion": "3"}, '{"prompt": '],
                      "broken.jsonl")
  with pytest.raises(Exception, match=r"broken.jsonl:2"):
    synth.read_seeds(_cfg(seed_path=broken), _task())
  with pytest.raises(UserInputError, match=r"list.jsonl:1: expected a JSON object"):
    synth.read_seeds(_cfg(seed_path=_seed_file(tmp_path, ["[1]"], "list.jsonl")), _task())


def test_config_errors(tmp_path):
  for key, value, msg in (("synth.novelty", "0", r"\(0, 1\]"),
                          ("synth.shots", "0", "> 0"),
                          ("synth.pattern", "[", "regular expression"),
                          ("synth.method", "evol", "one of"),
                          ("synth.min_chars", "900", "max_chars"),
                          ("synth.proposer_path", str(tmp_path / "nope.gguf"), "nope.gguf"),
                          ("synth.proposer_steps", "5", "proposer_path")):
    cfg = config_lib.Config(synth=config_lib.SynthCfg(proposer_path=str(tmp_path)))
    cfg = config_lib.override(cfg, key, value)
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")) as e:
      config_lib.validate(cfg)
    assert e.match(msg)


# -- a round with scripted proposals --------------------------------------------------


@dataclasses.dataclass
class FakeRun:
  cfg: config_lib.Config
  workdir: pathlib.Path
  task: tasks.Task
  tokenizer: CharTokenizer = dataclasses.field(default_factory=CharTokenizer)
  model: object = None
  summary: dict = dataclasses.field(default_factory=dict)
  stage_key: str = "synthesize"

  def stop_requested(self):
    return False


SCRIPT = [
    "40+2= 40+2",      # kept
    "40+2= 40+2",      # duplicate of the one just kept
    "5+5= 5+6",        # wrong: the expression does not solve it
    "1+1=",            # malformed
    "1+01= 1+1",       # unverifiable (not a canonical problem)
    "77+8= 77+8",      # kept
]


def _scripted(monkeypatch, script):
  calls = []

  def fake_propose(model, tokenizer, texts, **kw):
    calls.append(texts)
    start = sum(len(c) for c in calls[:-1])
    return [script[(start + i) % len(script)] for i in range(len(texts))]
  monkeypatch.setattr(_stage, "propose", fake_propose)
  return calls


def test_round_filters_and_provenance(tmp_path, monkeypatch):
  calls = _scripted(monkeypatch, SCRIPT)
  cfg = _cfg(proposals=6, rounds=1, shots=2, novelty=1.0, rouge_tokens="chars")
  run = FakeRun(cfg, tmp_path, _task(4))
  synth.stage_synthesize(run)
  assert len(calls) == 1 and len(calls[0]) == 6
  # Each proposal prompt shows 2 pool records as JSON lines.
  assert all(t.count("\n") == 2 and t.endswith("\n") for t in calls[0])
  rows = [json.loads(l) for l in (tmp_path / "synth/synthesize/data.jsonl").read_text().splitlines()]
  assert [r["prompt"] for r in rows] == ["40+2=", "77+8="]
  assert [(r["expression"], r["completion"], r["answer"]) for r in rows] == [
      ("40+2", "42", "42"), ("77+8", "85", "85")]
  for r in rows:
    p = r["provenance"]
    assert p["round"] == 1 and p["method"] == "verified" and p["verified"] == 1.0
    assert len(p["shown"]) == 2 and all(s.startswith("seed-") for s in p["shown"])
    assert 0.0 <= p["rouge_l"] < 1.0
  s = run.summary["synthesize"]
  assert s["removed"] == {"malformed": 1, "length": 0, "format": 0, "held_out": 0,
                          "duplicate": 1, "similar": 0, "unverifiable": 1, "wrong": 1}
  assert s["proposed"] == 6 and s["kept"] == 2 and s["seeds"] == 4
  # Later stages train on seeds + synthesized; evaluation is unchanged.
  train = run.task.records("train")
  assert len(train) == 6 and train[-1] == {"prompt": "77+8=", "expression": "77+8",
                                           "completion": "85", "answer": "85"}
  assert train[0]["expression"] + "=" == train[0]["prompt"]     # seeds show theirs too
  assert run.task.records("eval") == _task(4).records("eval")


def test_evaluation_problems_are_never_kept(tmp_path, monkeypatch):
  task = _task(4)
  held_out = task.records("eval")[0]["prompt"]          # e.g. "55+21="
  _scripted(monkeypatch, [f"{held_out} {held_out[:-1]}", "40+2= 40+2"])
  run = FakeRun(_cfg(proposals=2, rounds=1, shots=2, novelty=1.0), tmp_path, task)
  synth.stage_synthesize(run)
  s = run.summary["synthesize"]
  assert s["kept"] == 1 and s["removed"]["held_out"] == 1
  assert held_out not in [r["prompt"] for r in run.task.records("train")]


def test_zero_rounds_train_on_the_seeds_alone(tmp_path, monkeypatch):
  calls = _scripted(monkeypatch, SCRIPT)
  cfg = _cfg(rounds=0, proposer_path=str(tmp_path / "never-loaded"))
  run = FakeRun(cfg, tmp_path, _task(4))
  synth.stage_synthesize(run)
  assert calls == []
  s = run.summary["synthesize"]
  assert (s["seeds"], s["synthesized"], s["proposed"], s["kept"]) == (4, 0, 0, 0)
  assert [r["prompt"] for r in run.task.records("train")] == [
      r["prompt"] for r in _task(4).records("train")]


def test_latest_rounds_show_what_the_last_round_kept(tmp_path, monkeypatch):
  calls = _scripted(monkeypatch, ["40+2= 40+2", "77+8= 77+8",     # round 1 keeps 2
                                  "50+1= 50+1", "50+1= 50+1",     # round 2 keeps 1
                                  "61+3= 61+3", "62+4= 62+4"])    # round 3 keeps 2
  run = FakeRun(_cfg(proposals=2, rounds=3, shots=2, novelty=1.0, rouge_tokens="chars",
                     show="latest"), tmp_path, _task(4))
  synth.stage_synthesize(run)
  rows = [json.loads(l) for l in (tmp_path / "synth/synthesize/data.jsonl").read_text().splitlines()]
  shown = {r["prompt"]: set(r["provenance"]["shown"]) for r in rows}
  assert shown["40+2="] | shown["77+8="] <= {f"seed-{i}" for i in range(4)}
  assert shown["50+1="] == {"r1-0", "r1-1"}          # round 2 shows round 1's records
  # Round 2 kept one record, fewer than the 2 shots: round 3 shows round 1's again.
  assert shown["61+3="] == shown["62+4="] == {"r1-0", "r1-1"}
  assert "40+2= 40+2\n" in calls[1][0] and "50+1" not in "".join(calls[2])
  pool = _stage.Pool.of(["seed-0", "r1-0", "r2-0"], [{"prompt": p} for p in ("1=", "2=", "3=")],
                        "chars", [0, 1, 2])
  assert _stage.showable(pool, "pool", 1) == [0, 1, 2]
  assert _stage.showable(pool, "latest", 1) == [2]
  assert _stage.showable(pool, "latest", 2) == [0]   # no round kept 2: the seeds


def test_self_instruct_answers_with_the_policy(tmp_path, monkeypatch):
  _scripted(monkeypatch, ["40+2=", "3+3=", "9+9="])

  class Samples:
    def __init__(self, problems):
      answers = {"40+2=": ["41", "42"], "3+3=": ["5", "7"], "9+9=": ["18", "18"]}
      self.texts = [answers[p["prompt"]] for p in problems]
      self.correct = np.array([[float(t == arithmetic.reference_answer(p["prompt"])["answer"])
                                for t in ts] for p, ts in zip(problems, self.texts)])
      self.loglik = np.array([[-1.0, -2.0]] * len(problems))
  monkeypatch.setattr(_stage, "collect", lambda model, tok, problems, **kw: Samples(problems))
  run = FakeRun(_cfg(method="self_instruct", proposals=3, rounds=1, shots=1, responses=2),
                tmp_path, _task(2))
  synth.stage_synthesize(run)
  rows = [json.loads(l) for l in (tmp_path / "synth/synthesize/data.jsonl").read_text().splitlines()]
  # 40+2: only the second answer is right; 9+9: both are, the likelier one is kept.
  assert [(r["prompt"], r["completion"]) for r in rows] == [("40+2=", "42"), ("9+9=", "18")]
  assert run.summary["synthesize"]["removed"]["wrong"] == 1


def test_user_task_states_its_own_reference(tmp_path, monkeypatch):
  # A file task cannot compute a reference: proposals write completion and
  # answer, and the task's verifier checks one against the other.
  seeds = _seed_file(tmp_path, [{"prompt": f"reverse {w}", "completion": w[::-1], "answer": w[::-1]}
                                for w in ("abc", "hello", "rank")])
  task = tasks.FileTask(seeds, verifier=lambda text, r: float(text == r["answer"]))
  _scripted(monkeypatch, [
      '{"prompt": "reverse jax", "completion": "xaj", "answer": "xaj"}',
      '{"prompt": "reverse flax", "completion": "xalf", "answer": "nope"}',
  ])
  run = FakeRun(_cfg(proposals=2, rounds=1, shots=2), tmp_path, task)
  synth.stage_synthesize(run)
  s = run.summary["synthesize"]
  assert s["kept"] == 1 and s["removed"]["wrong"] == 1
  assert run.task.records("train")[-1] == {"prompt": "reverse jax", "completion": "xaj",
                                           "answer": "xaj"}


def test_respond_samples_with_the_real_sampler(tmp_path):
  # `_respond` through `inference.collect` and a real (tiny, random) model:
  # a verifier that accepts one answer text picks it; none accepted -> wrong.
  import jax
  from rankjax import testing
  tok = CharTokenizer()
  run = FakeRun(_cfg(method="self_instruct", responses=3, temperature=1.0), tmp_path, _task(2),
                model=testing.tiny_model(vocab_size=tok.vocab_size, hidden_size=32,
                                         num_layers=1, intermediate_size=64))
  cands = [_stage.Candidate({"prompt": "1+2=", "answer": "3"}, ["seed-0"]),
           _stage.Candidate({"prompt": "4+5=", "answer": "9"}, ["seed-1"])]
  seen = []

  def verify(text, record):
    seen.append((record["prompt"], text))
    return float(record["prompt"] == "1+2=")
  reasons = _stage._respond(run, cands, verify, jax.random.key(0))
  assert reasons == [None, "wrong"]
  assert len(seen) == 6                                  # 3 answers per prompt
  assert cands[0].verified == 1.0
  assert (cands[0].record["prompt"], cands[0].record["completion"]) in seen


def _teacher(path):
  """A tiny random Llama saved as a Hugging Face directory with its own BPE
  tokenizer (not the run's character tokenizer)."""
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
  from rankjax import models, testing
  tok = Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([f"{a}+{b}= {a}+{b}\n" for a in range(30) for b in range(30)], trainer)
  model = testing.tiny_model(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=1,
                             intermediate_size=64)
  models.save_pretrained(model, path)
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
      "pad_token": "<|endoftext|>", "bos_token": None}))
  return path


def test_a_pretrained_proposer_writes_with_its_own_tokenizer(tmp_path, monkeypatch):
  # synth.proposer_path: proposals come from that checkpoint through its own
  # tokenizer and the real sampler; the run's model and tokenizer are not
  # used to propose, and later stages still train the run's model.
  teacher = _teacher(tmp_path / "teacher")
  seen = []
  real = _stage.propose

  def spy(model, tokenizer, texts, **kw):
    seen.append((model, tokenizer))
    return real(model, tokenizer, texts, **kw)
  monkeypatch.setattr(_stage, "propose", spy)
  cfg = _cfg(proposals=6, rounds=2, shots=2, max_new_tokens=8, proposer_path=str(teacher),
             rouge_tokens="chars")
  run = FakeRun(cfg, tmp_path / "run", _task(4), model="the run's model")
  synth.stage_synthesize(run)
  assert len(seen) == 2 and seen[0][0] is seen[1][0]           # loaded once, both rounds
  model, tokenizer = seen[0]
  assert model is not run.model and model.config.vocab_size == tokenizer.vocab_size
  assert not isinstance(tokenizer, CharTokenizer)
  assert tokenizer.encode("12+3= 12+3") != CharTokenizer().encode("12+3= 12+3")
  s = run.summary["synthesize"]
  assert s["proposed"] == 12 and s["proposed"] == sum(s["removed"].values()) + s["kept"]
  # Scripted through the same path: what it keeps is the task's verified rows.
  monkeypatch.setattr(_stage, "propose", lambda model, tokenizer, texts, **kw: (
      seen.append((model, tokenizer)) or ["40+2= 40+2", "5+5= 5+6"][:len(texts)]))
  run = FakeRun(dataclasses.replace(cfg, synth=dataclasses.replace(cfg.synth, proposals=2,
                                                                    rounds=1)),
                tmp_path / "scripted", _task(4), model="the run's model")
  synth.stage_synthesize(run)
  assert not isinstance(seen[-1][1], CharTokenizer)
  assert run.task.records("train")[-1] == {"prompt": "40+2=", "expression": "40+2",
                                           "completion": "42", "answer": "42"}


def test_resume_redoes_an_unfinished_round_without_duplicates(tmp_path, monkeypatch):
  script = [f"{a}+{b}= {a}+{b}"
            for a in range(100, 130) for b in range(3)]
  _scripted(monkeypatch, script)
  cfg = _cfg(proposals=8, rounds=2, shots=2, novelty=1.0)
  synth.stage_synthesize(FakeRun(cfg, tmp_path / "full", _task(4)))
  full = (tmp_path / "full/synth/synthesize/data.jsonl").read_text()

  _scripted(monkeypatch, script)
  out = tmp_path / "killed/synth/synthesize"
  synth.stage_synthesize(FakeRun(_cfg(proposals=8, rounds=1, shots=2, novelty=1.0),
                                 tmp_path / "killed", _task(4)))
  one_round = (out / "data.jsonl").read_text()
  # Killed after round 2 wrote its rows but before its state: the state
  # says one round, the file holds rows of two.
  state = json.loads((out / "state.json").read_text())
  (out / "data.jsonl").write_text(one_round + one_round.replace('"round": 1', '"round": 2'))
  (out / "state.json").write_text(json.dumps(state))
  _scripted(monkeypatch, script[8:] + script[:8])  # the script continues where it stopped
  run = FakeRun(cfg, tmp_path / "killed", _task(4))
  synth.stage_synthesize(run)
  resumed = (out / "data.jsonl").read_text()
  assert resumed == full
  ids = [json.loads(l)["provenance"]["id"] for l in resumed.splitlines()]
  assert len(ids) == len(set(ids)) == 16
  assert len(json.loads((out / "state.json").read_text())["rounds"]) == 2


def test_a_stop_inside_a_round_keeps_nothing_of_it(tmp_path, monkeypatch):
  # SIGTERM during round 2's first chunk of proposals: round 2 is dropped
  # (not half-written), and the resumed run ends as an uninterrupted one.
  script = [f"{a}+{b}= {a}+{b}" for a in range(100, 400) for b in range(3)]
  monkeypatch.setattr(_stage, "_CHUNK", 4)
  _scripted(monkeypatch, script)
  cfg = _cfg(proposals=8, rounds=2, shots=2, novelty=1.0)
  synth.stage_synthesize(FakeRun(cfg, tmp_path / "full", _task(4)))
  full = (tmp_path / "full/synth/synthesize/data.jsonl").read_text()

  calls = _scripted(monkeypatch, script)

  class Stopped(FakeRun):
    def stop_requested(self):
      return len(calls) == 3            # round 1's two chunks, round 2's first
  synth.stage_synthesize(Stopped(cfg, tmp_path / "killed", _task(4)))
  out = tmp_path / "killed/synth/synthesize"
  assert len(calls) == 3
  assert len(json.loads((out / "state.json").read_text())["rounds"]) == 1
  assert {json.loads(l)["provenance"]["round"] for l in (out / "data.jsonl").read_text()
          .splitlines()} == {1}
  _scripted(monkeypatch, script[8:] + script[:8])  # the script continues where round 1 ended
  synth.stage_synthesize(FakeRun(cfg, tmp_path / "killed", _task(4)))
  assert (out / "data.jsonl").read_text() == full
  assert len(json.loads((out / "state.json").read_text())["rounds"]) == 2


TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.data.batch_size=8", "--config.data.num_train=16", "--config.sft.steps=3",
        "--config.log_every=1", "--config.eval.num_problems=4", "--config.eval.num_samples=2",
        "--config.synth.rounds=1", "--config.synth.proposals=8",
        "--config.synth.proposer_path=", "--config.synth.proposer_steps=2",
        "--config.synth.max_new_tokens=24",
        "--config.checkpoint.export_hf=false"]


def test_recipe_through_launch(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  argv = ["--config", "configs/synth_arith.py", "--workdir", str(tmp_path), *TINY]
  assert launch.main(argv) == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["evaluated"] == ["sft", "sft_2"]
  s = summary["synthesize"]
  assert s["proposed"] == 8 and s["proposed"] == sum(s["removed"].values()) + s["kept"]
  # Each sft trained under its own name (the second did not resume the first).
  assert summary["sft"]["steps"] == summary["sft_2"]["steps"] == 3
  assert (tmp_path / "checkpoints" / "synthesize_proposer_1").is_dir()
  assert (tmp_path / "synth" / "synthesize" / "state.json").exists()


def test_recipe_with_a_teacher_through_launch(tmp_path, monkeypatch):
  # The recipe's shape (a pretrained proposer), with a tiny teacher.
  teacher = _teacher(tmp_path / "teacher")
  monkeypatch.chdir(REPO)
  argv = ["--config", "configs/synth_arith.py", "--workdir", str(tmp_path / "run"), *TINY,
          f"--config.synth.proposer_path={teacher}", "--config.synth.proposer_steps=0",
          "--config.synth.max_new_tokens=8"]
  assert launch.main(argv) == 0
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["evaluated"] == ["sft", "sft_2"]
  s = summary["synthesize"]
  assert s["proposed"] == 8 and s["proposed"] == sum(s["removed"].values()) + s["kept"]
  assert not (tmp_path / "run" / "checkpoints" / "synthesize_proposer_1").exists()


def test_self_instruct_through_launch(tmp_path, monkeypatch):
  # The policy answers its own proposals through the real sampler; a random
  # tiny model proposes mostly malformed lines, so this checks the plumbing
  # and the accounting, not the yield.
  monkeypatch.chdir(REPO)
  argv = ["--config", "configs/synth_arith.py", "--workdir", str(tmp_path), *TINY,
          "--config.pipeline=synthesize", "--config.synth.method=self_instruct",
          "--config.synth.proposer_steps=0", "--config.synth.responses=2",
          "--config.synth.temperature=0.7"]
  assert launch.main(argv) == 0
  s = json.loads((tmp_path / "summary.json").read_text())["synthesize"]
  assert s["proposed"] == 8 and s["proposed"] == sum(s["removed"].values()) + s["kept"]
  rows = (tmp_path / "synth" / "synthesize" / "data.jsonl").read_text().splitlines()
  assert len(rows) == s["kept"]
