"""The package's import graph has no cycle: every arrow between its modules goes one way.

Read from the source with ``ast`` (nothing is imported), so the test takes well under a second.
Imports inside functions count as much as those at the top: a cycle through a function-level
import is still a cycle, only deferred.
"""
import ast
import os
import pkgutil

import gantl_jax

PACKAGE = "gantl_jax"


def _modules() -> dict[str, str]:
  """Every module of the package: its dotted name -> its file."""
  root = os.path.dirname(gantl_jax.__file__)
  out = {PACKAGE: gantl_jax.__file__}
  for info in pkgutil.walk_packages([root], prefix=f"{PACKAGE}."):
    path = os.path.join(info.module_finder.path, info.name.rsplit(".", 1)[-1])
    out[info.name] = os.path.join(path, "__init__.py") if info.ispkg else path + ".py"
  return out


def _imports(name: str, path: str, modules: dict[str, str]) -> list[tuple[str, ast.AST]]:
  """The package modules that ``name`` imports anywhere in its file, each with its import node.

  ``from a.b import c`` is an import of ``a.b.c`` when that is a module, else of ``a.b``.
  """
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  is_package = path.endswith("__init__.py")
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, node) for a in node.names if a.name in modules]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolved against the importing module's package
        parts = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([base] if base else []))
      for a in node.names:
        full = f"{base}.{a.name}"
        if full in modules:
          out.append((full, node))
        elif base in modules:
          out.append((base, node))
  return [(m, node) for m, node in out if m != name]


def _graph() -> dict[str, set[str]]:
  """Module -> the package modules it imports. Importing ``a.b.c`` runs ``a/b/__init__.py`` first,
  so it counts as an import of ``a.b`` too (but not from inside ``a.b`` itself)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    imported = {m for m, _ in _imports(name, path, modules)}
    parents = {".".join(m.split(".")[:i]) for m in imported for i in range(2, m.count(".") + 1)}
    graph[name] = imported | {p for p in parents if not (name == p or name.startswith(p + "."))}
  return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of ``graph`` as a list of modules that starts and ends with the same one, or None."""
  state = {}  # 1: on the current path, 2: done
  path = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_walk_finds_the_package_modules():
  modules = _modules()
  for name in (f"{PACKAGE}.config", f"{PACKAGE}.errors", f"{PACKAGE}.models.stylegan2",
               f"{PACKAGE}.metrics.swd", f"{PACKAGE}.data.pipeline"):
    assert name in modules
  assert len(modules) > 40


def test_find_cycle_on_a_known_graph():
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_import_graph_has_no_cycle():
  cycle = _find_cycle(_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_errors_and_defaults_are_leaves():
  graph = _graph()
  assert graph[f"{PACKAGE}.errors"] == set() and graph[f"{PACKAGE}.defaults"] == set()


def test_error_classes_live_in_errors():
  """Every exception class of the package is in errors.py, but the weight importer's own, which
  only that command raises and catches."""
  local = {f"{PACKAGE}.cli.import_stylegan2": {"ConversionError", "OutputError", "UsageError"}}
  elsewhere = []
  for name, path in _modules().items():
    if name == f"{PACKAGE}.errors":
      continue
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      bases = [ast.unparse(b) for b in getattr(node, "bases", [])]
      if (isinstance(node, ast.ClassDef) and any(b.endswith(("Error", "Exception")) for b in bases)
          and node.name not in local.get(name, ())):
        elsewhere.append(f"{name}.{node.name}")
  assert not elsewhere, elsewhere


def test_config_imports_package_modules_only_at_the_top():
  modules = _modules()
  name = f"{PACKAGE}.config"
  with open(modules[name], encoding="utf-8") as f:
    tree = ast.parse(f.read())
  top = {n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
  late = [f"line {node.lineno}: {m}" for m, node in _imports(name, modules[name], modules)
          if node.lineno not in top]
  assert not late, "config.py imports package modules inside functions: " + "; ".join(late)
