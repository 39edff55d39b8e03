"""`python -m rankjax.launch` turns an input error (config, data file or row,
checkpoint) into one line, `error: <message>`, exit code 2, no traceback;
`--debug` shows the traceback.

The cases that need jax run in one subprocess through `launch.main(argv)`,
each with stderr (file descriptor 2, so logs from C++ and grain count too)
sent to its own file: jax starts once. The command line itself is checked
with real `python -m rankjax.launch` processes on config errors, which
never import jax.
"""

import json
import pickle
import subprocess
import sys

import pytest

from multidevice import cpu_env
from rankjax import config as config_lib
from rankjax import errors, launch
from rankjax.data import DataError
from rankjax.data._sources import DataFileNotFoundError

TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.model.intermediate_size=64",
        "--config.sft.steps=1", "--config.data.max_length=16",
        "--config.data.max_prompt_length=12"]
GOOD = {"prompt": "1+1=", "completion": "2"}

# Runs each case through launch.main with fd 2 redirected to its own file;
# an exception that escapes main is printed there as the interpreter would.
_RUNNER = r"""
import json, os, sys, traceback
from rankjax import launch
cases = json.loads(sys.argv[1])
codes = {}
for name, (argv, stderr_path) in cases.items():
  sys.stderr.flush()
  saved = os.dup(2)
  with open(stderr_path, "w") as f:
    os.dup2(f.fileno(), 2)
  try:
    codes[name] = launch.main(argv)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    codes[name] = 1
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
print(json.dumps(codes))
"""


def _env() -> dict:
  return cpu_env()  # one device: the batch of 4 must divide the mesh


def _jsonl(path, rows) -> str:
  with open(path, "w") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
  return str(path)


def _cases(tmp) -> dict[str, tuple[list[str], list[str]]]:
  """{name: (argv, strings the error line must contain)}."""
  sft = ["--config.data.source=jsonl", "--config.pipeline=sft", "--config.data.batch_size=4",
         *TINY]
  # Four rows and a batch of four: the first batch reads every row.
  broken = _jsonl(tmp / "broken.jsonl", [GOOD, GOOD, '{"prompt": "3+3=", ', GOOD])
  no_completion = _jsonl(tmp / "no_completion.jsonl", [GOOD, {"prompt": "2+2="}, GOOD, GOOD])
  empty = _jsonl(tmp / "empty.jsonl", [])
  ckpt = tmp / "torch_checkpoint"
  ckpt.mkdir()
  (ckpt / "pytorch_model.bin").write_bytes(b"not unpickled")
  return {
      "unknown_key": (["--config.sft.stepz=1"], ["'sft.stepz'"]),
      "bad_value": (["--config.sft.steps=many"], ["'sft.steps'", "'many'"]),
      "missing_config": (["--config", str(tmp / "no_recipe.py")], [str(tmp / "no_recipe.py")]),
      "missing_data": ([*sft, "--config.data.path=/nonexistent.jsonl"], ["/nonexistent.jsonl"]),
      "empty_data": ([*sft, f"--config.data.path={empty}"], [empty, "empty"]),
      "broken_line": ([*sft, f"--config.data.path={broken}"], [f"{broken}:3:", "invalid JSON"]),
      "missing_field": ([*sft, f"--config.data.path={no_completion}"],
                        [f"{no_completion}:2:", "'completion'", "missing"]),
      "pickle_checkpoint": (["--config.pipeline=generate", f"--config.model.path={ckpt}"],
                            [str(ckpt), "pytorch_model.bin", "safetensors", "unpickle"]),
  }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{case: (exit code, stderr, expected strings)} from one subprocess."""
  tmp = tmp_path_factory.mktemp("launch_errors")
  cases = _cases(tmp)
  args = {name: ([*argv, "--workdir", str(tmp / f"work_{name}")], str(tmp / f"{name}.err"))
          for name, (argv, _) in cases.items()}
  proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(args)], env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  codes = json.loads(proc.stdout.strip().splitlines()[-1])
  return {name: (codes[name], open(args[name][1]).read(), want)
          for name, (_, want) in cases.items()}


def _check_one_line_error(code: int, stderr: str, want: list[str]) -> None:
  assert "Traceback" not in stderr, stderr
  assert code == 2, stderr
  last = [line for line in stderr.splitlines() if line.strip()][-1]
  assert last.startswith("error: "), stderr
  for text in want:
    assert text in last, (text, last)


@pytest.mark.parametrize("case", ["unknown_key", "bad_value", "missing_config", "missing_data",
                                  "empty_data", "broken_line", "missing_field",
                                  "pickle_checkpoint"])
def test_input_error_is_one_line(results, case):
  _check_one_line_error(*results[case])


def test_command_line_prints_one_line_and_exits_2(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "rankjax.launch", "--config.sft.stepz=1",
                         "--workdir", str(tmp_path)], env=_env(), capture_output=True,
                        text=True, timeout=120)
  _check_one_line_error(proc.returncode, proc.stderr, ["'sft.stepz'"])


def test_debug_shows_the_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "rankjax.launch", "--debug",
                         "--config.sft.stepz=1", "--workdir", str(tmp_path)], env=_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert "Traceback" in proc.stderr and "ConfigError: unknown config key 'sft.stepz'" in proc.stderr


def test_a_bug_keeps_its_traceback(monkeypatch):
  def broken_loader(path):
    raise RuntimeError("a bug, not an input error")
  monkeypatch.setattr(config_lib, "load", broken_loader)
  with pytest.raises(RuntimeError, match="a bug"):
    launch.main(["--workdir", "unused"])


# -- finding the input error behind another exception ---------------------------


def test_user_error_is_found_along_the_chain():
  data_error = DataError("invalid JSON", location="d.jsonl:3")
  try:
    try:
      raise data_error
    except DataError as e:
      raise RuntimeError("reading batch 0 failed") from e
  except RuntimeError as e:
    wrapped = e
  assert errors.find_user_error(wrapped) is data_error
  group = ExceptionGroup("workers", [KeyError("x"), wrapped])
  assert errors.find_user_error(group) is data_error
  assert errors.find_user_error(RuntimeError("a bug")) is None


def test_user_error_is_rebuilt_from_text_only_wrappers():
  # What grain's UnfilteredStackTraceError keeps of an error: its type and text.
  text = ("rankjax.data._formats.DataError: d.jsonl:3: invalid JSON\n\n"
          "The stack trace below excludes Grain-internal frames.")
  found = errors.find_user_error(RuntimeError(text))
  assert isinstance(found, DataError) and str(found) == "d.jsonl:3: invalid JSON"
  # Only rankjax's input errors are recognised, not any name that looks like one.
  assert errors.find_user_error(RuntimeError("rankjax.launch.main: oops")) is None
  assert errors.find_user_error(RuntimeError("builtins.ValueError: x")) is None


def test_one_line_joins_lines():
  assert errors.one_line(ValueError("a\n\n  b \n")) == "a; b"


def test_input_errors_survive_pickling():
  # grain's worker processes send a data source's error back pickled.
  for e in (DataError("empty", location="d.jsonl:3", field="completion", reason="empty"),
            DataFileNotFoundError("no data file matches 'd.jsonl'")):
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and str(back) == str(e) and vars(back) == vars(e)
  assert isinstance(back, FileNotFoundError) and isinstance(back, errors.UserInputError)
