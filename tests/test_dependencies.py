"""`pip install -e .` (no extras) runs the default `python -m rankjax.launch`.

The test environment has the extras installed, so a base install is
simulated: in a subprocess, every distribution outside rankjax's base
requirements (and what they require in turn) is hidden from import, as if
it were not installed, and the default pipeline runs at a tiny size. An
import of a hidden module fails the run, exactly as on a base install; then
every module the run imported must come from the standard library, rankjax
or that closure.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from multidevice import cpu_env

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# The default recipe (rankjax/demo.py: sft, eval, grpo, eval, rerank), tiny.
TINY_DEMO = ["--config.model.hidden_size=32", "--config.model.num_layers=1",
             "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
             "--config.model.head_dim=16", "--config.model.intermediate_size=64",
             "--config.data.batch_size=8", "--config.data.max_length=16",
             "--config.data.max_prompt_length=12", "--config.data.num_train=64",
             "--config.data.num_eval=8", "--config.sft.steps=2", "--config.grpo.steps=1",
             "--config.grpo.num_prompts=2", "--config.grpo.group_size=2",
             "--config.eval.num_problems=4", "--config.eval.num_samples=2",
             "--config.sample.max_new_tokens=4"]

# Hides top-level modules (argv[1], JSON) from every finder, runs
# launch.main(argv[3:]) and prints what it imported, or the missing module.
_RUNNER = r"""
import json, sys
hidden = set(json.loads(sys.argv[1]))

class Hide:
  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in hidden:
      return None
    find = getattr(self._finder, "find_spec", None)
    return find(name, path, target) if find else None

  def __getattr__(self, attr):
    return getattr(self._finder, attr)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
before = set(sys.modules)
from rankjax import launch
try:
  result = {"code": launch.main(sys.argv[3:])}
except ModuleNotFoundError as e:
  result = {"code": 1, "missing": e.name}
result["modules"] = {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())
                     if name not in before}
with open(sys.argv[2], "w") as f:
  json.dump(result, f)
"""

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


def _normalize(name: str) -> str:
  """PEP 503: runs of -, _ and . are one -, lower case."""
  return re.sub(r"[-_.]+", "-", name).lower()


def _parse(requirement: str) -> tuple[str, set[str], set[str]]:
  """(name, extras it asks for, extras its marker needs) of a PEP 508 line."""
  match = _NAME.match(requirement)
  wanted = {_normalize(e) for e in (match.group(2) or "").split(",") if e.strip()}
  marker = requirement.partition(";")[2]
  return _normalize(match.group(1)), wanted, {_normalize(e) for e in _EXTRA_MARKER.findall(marker)}


def _base_requirements() -> list[str]:
  """rankjax's `Requires-Dist` without extras. From pyproject.toml in a source
  tree: an editable install's metadata is only as new as its last
  `pip install -e .`."""
  if PYPROJECT.exists():
    return tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
  return importlib.metadata.requires("rankjax") or []


def _closure(requirements: list[str]) -> set[str]:
  """Normalised names of the distributions `requirements` pull in: each one's
  requirements without an extra marker, plus those of the extras asked for
  (`etils[epath]`)."""
  extras_of: dict[str, set[str]] = {}
  todo = [(name, wanted) for name, wanted, needs in map(_parse, requirements) if not needs]
  while todo:
    name, wanted = todo.pop()
    if name in extras_of and wanted <= extras_of[name]:
      continue
    extras_of[name] = extras_of.get(name, set()) | wanted
    try:
      requires = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
      continue  # a platform-specific requirement not installed here
    for sub, sub_wanted, needs in map(_parse, requires):
      if not needs or needs & extras_of[name]:
        todo.append((sub, sub_wanted))
  return set(extras_of)


def _stdlib_file(path: str) -> bool:
  dirs = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
  return any(os.path.abspath(path).startswith(d + os.sep) for d in dirs)


def _owner(module: str, path: str | None, by_top: dict[str, list[str]]) -> str | None:
  """The distribution that installed `module`: the only one providing its
  top-level name, or, for a namespace shared by several (`google`), the one
  whose files hold it. None: the interpreter's own, made at run time, or a
  namespace package itself (no file; its modules are checked one by one)."""
  dists = sorted({_normalize(d) for d in by_top.get(module.partition(".")[0], ())})
  if len(dists) <= 1 or path is None:
    return dists[0] if len(dists) == 1 else None
  path = os.path.abspath(path)
  for dist in dists:
    files = importlib.metadata.distribution(dist).files or ()
    if any(os.path.abspath(f.locate()) == path for f in files):
      return dist
  return "/".join(dists)


def test_base_dependencies_run_the_default_job(tmp_path):
  allowed = _closure(_base_requirements()) | {"rankjax"}
  by_top = importlib.metadata.packages_distributions()
  hidden = sorted(top for top, dists in by_top.items()
                  if top not in sys.stdlib_module_names
                  and not {_normalize(d) for d in dists} & allowed)
  out = tmp_path / "imported.json"
  env = cpu_env()
  proc = subprocess.run(
      [sys.executable, "-c", _RUNNER, json.dumps(hidden), str(out),
       "--workdir", str(tmp_path / "work"), *TINY_DEMO],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and out.exists(), proc.stderr[-4000:]
  result = json.loads(out.read_text())
  missing = result.get("missing")
  assert missing is None, (
      f"the default run imports {missing!r} (distribution "
      f"{'/'.join(by_top.get(missing.partition('.')[0], ['?']))}), which rankjax's base "
      "dependencies do not install: add it to [project] dependencies in pyproject.toml")
  assert result["code"] == 0, proc.stderr[-4000:]
  outside = {}
  for module, path in result["modules"].items():
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top == "rankjax":
      continue
    dist = _owner(module, path, by_top)
    if dist is None and (path is None or _stdlib_file(path)):
      continue
    if dist not in allowed and len(module) < len(outside.get(dist, module + ".")):
      outside[dist] = module
  assert not outside, "modules from outside rankjax's base dependencies: " + ", ".join(
      f"{module} (distribution {dist})" for dist, module in sorted(outside.items(), key=str))
