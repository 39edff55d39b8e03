"""The import layers hold (parsed with ast, nothing imported):

  launch -> run -> {train, inference, improve} -> {losses, rewards, sampling,
  data (tasks), checkpoint} -> {models, tokenizer, parallel, config, errors}

Libraries never import the orchestrator (`run`) or the launcher; `train` and
`inference` never reach into each other; `bench` uses public names only;
and there is no import cycle between modules.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "rankjax"
# Programs: the launcher, the orchestrator and the benchmarks.
TOP = ("launch", "run", "bench")
SIBLINGS = ("train", "inference")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Modules `path` imports at run time (TYPE_CHECKING blocks excluded)."""
  tree = ast.parse(path.read_text())
  skip = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
      skip.update(id(n) for n in ast.walk(node))
  out = set()
  for node in ast.walk(tree):
    if id(node) in skip:
      continue
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return {m for m in out if m == "rankjax" or m.startswith("rankjax.")}


def _graph() -> dict[str, set[str]]:
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    # "from rankjax import train" names a module; "from rankjax.x import f" a function.
    graph[name] = {m for m in _imports(path) if m in modules} - {name}
  return graph


def _area(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_libraries_never_import_the_orchestrator():
  bad = [(m, d) for m, deps in _graph().items() for d in deps
         if _area(d) in ("launch", "run") and _area(m) not in TOP]
  assert not bad, bad


def test_train_and_inference_do_not_import_each_other():
  bad = [(m, d) for m, deps in _graph().items() for d in deps
         if _area(m) in SIBLINGS and _area(d) in SIBLINGS and _area(m) != _area(d)]
  assert not bad, bad


def test_bench_uses_public_names_only():
  bad = [(m, d) for m, deps in _graph().items() if _area(m) == "bench" for d in deps
         if _area(d) != "bench" and any(p.startswith("_") for p in d.split(".")[1:])]
  assert not bad, bad


def test_no_import_cycles():
  graph = _graph()
  # Package __init__ files re-export their own modules: an edge from a
  # package to its submodule and back is how packages work, not a cycle.
  def edges(m):
    return {d for d in graph[m] if not d.startswith(m + ".")}

  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for d in sorted(edges(m)):
      if state.get(d) == "open":
        cycle = stack[stack.index(d):] + [d]
        raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
      if d not in state:
        visit(d)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_the_checker_sees_imports():
  graph = _graph()
  assert "rankjax.train" in graph["rankjax.run"]
  assert "rankjax.train._grpo" in graph["rankjax.train._rl"]
