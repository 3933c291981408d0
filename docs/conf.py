"""Sphinx configuration: MyST markdown pages, furo theme, API reference generated from hesso_jax.

The API page is not a list of module paths: at build time every name in ``hesso_jax.__all__``
(or, while the package has no ``__all__``, every public non-module attribute) is documented via
its public alias ``hesso_jax.<name>``, grouped by the subpackage that defines it. Moving code
between modules therefore never breaks the reference, and a new public name appears by itself.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import types

sys.path.insert(0, os.path.abspath(".."))

import hesso_jax  # noqa: E402
import hesso_jax.examples  # noqa: E402

project = "hesso_jax"
author = "hesso_jax authors"
copyright = "the hesso_jax authors"
release = hesso_jax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "furo"
html_title = f"hesso_jax {release}"

# Subpackage (second component of ``obj.__module__``) -> section title, in page order.
SECTIONS = {
    "discovery": "Discovery",
    "space": "Search space",
    "optim": "Optimizers (HESSO, HESSO-CRIC)",
    "surgery": "Surgery (prune, compress, export)",
    "metrics": "Metrics",
    "sharding": "Sharding",
    "checkpoint": "Checkpoints",
}


def public_names(module: types.ModuleType) -> list[str]:
  """``module.__all__``, or its public non-module attributes when it has none."""
  names = getattr(module, "__all__", None)
  if names is None:
    names = [n for n, v in vars(module).items()
             if not n.startswith("_") and not isinstance(v, types.ModuleType)]
  return sorted(names, key=str.lower)


def _section(obj) -> str:
  mod = getattr(obj, "__module__", None) or ""
  parts = mod.split(".")
  return parts[1].lstrip("_") if len(parts) > 1 and parts[0] == "hesso_jax" else "constants"


def _directive(qual: str, obj) -> str:
  if inspect.isclass(obj):
    # NamedTuple states document their fields in the class docstring (no duplicate entries).
    members = "" if issubclass(obj, tuple) else "   :members:\n"
    return f"```{{eval-rst}}\n.. autoclass:: {qual}\n{members}```\n"
  if callable(obj):
    return f"```{{eval-rst}}\n.. autofunction:: {qual}\n```\n"
  # Plain values (strings, dicts, tuples): shown as they are, not with their type's docstring.
  return f"```{{eval-rst}}\n.. py:data:: {qual}\n   :value: {obj!r}\n```\n"


def api_markdown() -> str:
  """The generated body of api.md: one section per subpackage, a summary table, then entries."""
  groups: dict[str, list[str]] = {}
  for name in public_names(hesso_jax):
    obj = getattr(hesso_jax, name)
    if isinstance(obj, types.ModuleType) or name == "__version__":
      continue
    key = "constants" if not (inspect.isclass(obj) or callable(obj)) else _section(obj)
    groups.setdefault(key, []).append(name)
  order = [k for k in SECTIONS if k in groups] + sorted(k for k in groups if k not in SECTIONS)
  out = []
  for key in order:
    names = groups[key]
    title = SECTIONS.get(key, "Constants" if key == "constants" else key.capitalize())
    out.append(f"## {title}\n")
    out.append("```{eval-rst}\n.. autosummary::\n\n" + "".join(
        f"   hesso_jax.{n}\n" for n in names) + "```\n")
    out += [_directive(f"hesso_jax.{n}", getattr(hesso_jax, n)) for n in names]
  ex = public_names(hesso_jax.examples)
  out.append("## `hesso_jax.examples` (tutorial helpers)\n")
  out.append("```{eval-rst}\n.. automodule:: hesso_jax.examples\n   :no-members:\n```\n")
  out += [_directive(f"hesso_jax.examples.{n}", getattr(hesso_jax.examples, n)) for n in ex]
  return "\n".join(out)


# ``*args`` / ``**kwargs`` written bare in a docstring would open RST emphasis; escape them (code
# spans excepted) so the idiom never breaks the -W build.
_CODE = re.compile(r"(``.*?``|`[^`]*`)")
_STARS = re.compile(r"(?<![\\\w*])(\*\*?)(\w+)\b(?!\*)")


def _escape_stars(app, what, name, obj, options, lines):
  for i, line in enumerate(lines):
    parts = _CODE.split(line)
    parts[::2] = [_STARS.sub(lambda m: "\\*" * len(m.group(1)) + m.group(2), p) for p in parts[::2]]
    lines[i] = "".join(parts)


def _inject_api(app, docname, source):
  if docname == "api":
    source[0] = source[0].replace("<!-- generated-api -->", api_markdown())


def setup(app):
  app.connect("source-read", _inject_api)
  app.connect("autodoc-process-docstring", _escape_stars)
