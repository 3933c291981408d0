"""Generate the Colab notebooks (``NN_name.ipynb``) from their jupytext sources (``NN_name.py``).

    python colab/sync.py            # rewrite the .ipynb files (no outputs) from the .py sources
    python colab/sync.py --check    # exit 1 if a committed .ipynb is out of date

The ``.py`` files (jupytext percent format: ``# %%`` code cells, ``# %% [markdown]`` text cells)
are the source: edit them, lint them with ruff, run them as scripts or open them in Jupyter with
jupytext. The repository URL in each notebook's install cell (``REPO = "..."``) is copied from
``[project.urls] Repository`` in pyproject.toml, the one place it is declared. Cell ids are
deterministic, so an unchanged source gives a byte-identical notebook.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

import jupytext
import nbformat

HERE = pathlib.Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"
REPO_LINE = re.compile(r'^REPO = "[^"]*"', re.M)
METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
}


def repository_url(pyproject: pathlib.Path = PYPROJECT) -> str:
  """``Repository`` of ``[project.urls]`` (a regex, so Python 3.10 needs no TOML parser)."""
  text = pyproject.read_text(encoding="utf-8")
  urls = re.search(r"^\[project\.urls\]\n(.*?)(?:^\[|\Z)", text, re.M | re.S)
  m = urls and re.search(r'^Repository\s*=\s*"([^"]+)"', urls.group(1), re.M)
  if not m:
    raise ValueError(f"{pyproject}: no `Repository = \"...\"` under [project.urls]")
  return m.group(1)


def sources() -> list[pathlib.Path]:
  return sorted(HERE.glob("[0-9][0-9]_*.py"))


def with_repo(py_text: str, url: str) -> str:
  """The source with its install cell's ``REPO = "..."`` line set to ``url``."""
  new, n = REPO_LINE.subn(f'REPO = "{url}"', py_text, count=1)
  if n != 1:
    raise ValueError('a notebook source has no `REPO = "..."` line in its install cell')
  return new


def render(py_text: str, name: str) -> str:
  """The .ipynb text for a jupytext percent source (``name``: the notebook's file stem)."""
  nb = jupytext.reads(py_text, fmt="py:percent")
  nb.metadata = dict(METADATA)
  for i, cell in enumerate(nb.cells):
    cell["id"] = f"{name.split('_')[0]}-{i:02d}"
    cell["metadata"] = {}
    if cell.cell_type == "code":
      cell["outputs"], cell["execution_count"] = [], None
  nbformat.validate(nb)
  return nbformat.writes(nb) + "\n"


def sync(check: bool = False) -> list[str]:
  """Update (or, with ``check``, compare) every source's REPO line and notebook; names out of date."""
  url = repository_url()
  stale = []
  for py in sources():
    text = py.read_text(encoding="utf-8")
    fixed = with_repo(text, url)
    ipynb = py.with_suffix(".ipynb")
    want = render(fixed, py.stem)
    if fixed != text:
      stale.append(py.name)
      if not check:
        py.write_text(fixed, encoding="utf-8")
    if not ipynb.exists() or ipynb.read_text(encoding="utf-8") != want:
      stale.append(ipynb.name)
      if not check:
        ipynb.write_text(want, encoding="utf-8")
  return stale


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--check", action="store_true", help="only report out-of-date files")
  args = ap.parse_args(argv)
  stale = sync(check=args.check)
  for name in stale:
    print(("out of date: " if args.check else "wrote ") + f"colab/{name}")
  return 1 if (args.check and stale) else 0


if __name__ == "__main__":
  sys.exit(main())
