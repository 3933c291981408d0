"""Fail when the import graph of a package has a cycle (lazy imports inside functions included).

    python tools/check_imports.py                    # checks hesso_jax/ under the repository
    python tools/check_imports.py --root DIR --package NAME [--verbose]

Every ``import`` / ``from ... import`` statement of every module counts, wherever it appears
(module level, inside functions, in ``try`` blocks), except those under ``if TYPE_CHECKING:``,
which never run. An edge ``A -> B`` means that executing ``A`` may import ``B``: ``from P import
x`` points at the submodule ``P.x`` when there is one and at ``P`` otherwise, and importing
``P.Q.R`` from outside ``P`` also runs ``P/__init__`` and ``P/Q/__init__`` (edges to them). A
strongly connected component with more than one module, or a module importing itself, is a
cycle; each is printed with one closed path through it, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys
from collections.abc import Iterator

Graph = dict[str, set[str]]


def module_names(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """{dotted module name: file} for every ``.py`` file of ``package`` under ``root``."""
  out = {}
  for path in sorted((root / package).rglob("*.py")):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _is_type_checking(node: ast.If) -> bool:
  t = node.test
  return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
    isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
  )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
  """Every import statement that may run (``if TYPE_CHECKING:`` bodies skipped)."""
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    children = list(ast.iter_child_nodes(node))
    if isinstance(node, ast.If) and _is_type_checking(node):
      children = list(node.orelse)
    stack.extend(children)


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
  """The absolute module name of ``from <node.module> import ...`` written inside ``module``."""
  if not node.level:
    return node.module or ""
  parts = module.split(".")
  pkg = parts if is_package else parts[:-1]
  pkg = pkg[: len(pkg) - (node.level - 1)]
  return ".".join(pkg + ([node.module] if node.module else []))


def _targets(
  module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: dict[str, pathlib.Path]
) -> Iterator[str]:
  if isinstance(node, ast.Import):
    for alias in node.names:
      yield alias.name
    return
  base = _base(module, is_package, node)
  for alias in node.names:
    sub = f"{base}.{alias.name}"
    yield sub if sub in known else base


def _with_parents(target: str, importer: str) -> Iterator[str]:
  """``target`` and the packages it runs first, except those that contain ``importer``."""
  parts = target.split(".")
  for i in range(1, len(parts) + 1):
    name = ".".join(parts[:i])
    if i == len(parts) or not (importer == name or importer.startswith(name + ".")):
      yield name


def import_graph(root: pathlib.Path, package: str) -> Graph:
  """{module: modules of ``package`` it may import}."""
  known = module_names(root, package)
  graph: Graph = {m: set() for m in known}
  for module, path in known.items():
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in _import_nodes(tree):
      for target in _targets(module, is_package, node, known):
        graph[module].update(t for t in _with_parents(target, module) if t in known)
  return graph


def cycles(graph: Graph) -> list[list[str]]:
  """The strongly connected components that contain a cycle (Tarjan), each sorted."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  on_stack: set[str] = set()
  stack: list[str] = []
  out: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1 or v in graph[v]:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def closed_path(graph: Graph, comp: list[str]) -> list[str]:
  """A path ``a -> ... -> a`` inside the strongly connected component ``comp`` (BFS)."""
  start, members = comp[0], set(comp)
  parent: dict[str, str] = {}
  frontier = [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in sorted(graph[v] & members):
        if w == start:
          path = [v]
          while path[-1] != start:
            path.append(parent[path[-1]])
          return [start] + path[::-1][1:] + [start] if v != start else [start, start]
        if w not in parent:
          parent[w] = v
          nxt.append(w)
    frontier = nxt
  return comp


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--root", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[1])
  ap.add_argument("--package", default="hesso_jax")
  ap.add_argument("--verbose", action="store_true", help="print every edge")
  args = ap.parse_args(argv)
  graph = import_graph(args.root, args.package)
  if args.verbose:
    for m in sorted(graph):
      print(f"{m} -> {', '.join(sorted(graph[m])) or '-'}")
  found = cycles(graph)
  for comp in found:
    print(f"import cycle among {len(comp)} module(s): {' -> '.join(closed_path(graph, comp))}")
  if not found:
    n = sum(len(v) for v in graph.values())
    print(f"no import cycles in {args.package} ({len(graph)} modules, {n} edges)")
  return 1 if found else 0


if __name__ == "__main__":
  sys.exit(main())
