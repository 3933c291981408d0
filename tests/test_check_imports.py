"""tools/check_imports.py: import cycles are found, lazy ones included; non-cycles pass."""

import pathlib
import sys
import textwrap

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))

import check_imports as CI  # noqa: E402


def _package(root, files):
  for name, src in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(src))


def test_lazy_cycle_through_a_function_is_reported(tmp_path, capsys):
  _package(
    tmp_path,
    {
      "pkg/__init__.py": "from pkg.a import f\n",
      "pkg/a.py": "def f():\n  from pkg import b  # lazy\n  return b\n",
      "pkg/b.py": "from pkg.c import g\n",
      "pkg/c.py": "import pkg.a\n",
    },
  )
  assert CI.main(["--root", str(tmp_path), "--package", "pkg"]) == 1
  out = capsys.readouterr().out
  assert "pkg.a -> pkg.b -> pkg.c -> pkg.a" in out


def test_relative_imports_and_parent_packages_count(tmp_path):
  # pkg.sub.x imports pkg.y, whose import runs pkg.sub/__init__ first, which imports pkg.sub.x
  _package(
    tmp_path,
    {
      "pkg/__init__.py": "",
      "pkg/sub/__init__.py": "from .x import X\n",
      "pkg/sub/x.py": "from ..y import Y\nX = 1\n",
      "pkg/y.py": "Y = 2\n",
      "pkg/z.py": "from pkg.sub.x import X\n",
    },
  )
  g = CI.import_graph(tmp_path, "pkg")
  assert g["pkg.sub.x"] == {"pkg.y"} and g["pkg.sub"] == {"pkg.sub.x"}
  assert g["pkg.z"] == {"pkg.sub", "pkg.sub.x"}
  assert CI.cycles(g) == []
  (tmp_path / "pkg/y.py").write_text("Y = 2\ndef h():\n  from pkg.z import X\n")
  assert CI.cycles(CI.import_graph(tmp_path, "pkg")) == [["pkg.sub", "pkg.sub.x", "pkg.y", "pkg.z"]]


def test_type_checking_imports_and_acyclic_packages_pass(tmp_path, capsys):
  _package(
    tmp_path,
    {
      "pkg/__init__.py": "from pkg.a import f\n",
      "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from pkg import b\n"
      "def f():\n  return 1\n",
      "pkg/b.py": "from pkg.a import f\n",
    },
  )
  assert CI.main(["--root", str(tmp_path), "--package", "pkg"]) == 0
  assert "no import cycles" in capsys.readouterr().out
