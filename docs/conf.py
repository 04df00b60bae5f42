"""Sphinx configuration: the API reference of `reweight`, generated from its docstrings.

Build (offline; nothing here fetches from the network):

  python -m sphinx -b html docs docs/_build/html
"""

import os
import sys

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if os.path.isdir(os.path.join(_ROOT, "reweight")):  # a checkout; else the installed package
  sys.path.insert(0, _ROOT)

project = "reweight"
author = "reweight authors"
copyright = "reweight authors"  # noqa: A001

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style Args / Returns / Raises / Examples
    "sphinx.ext.mathjax",  # `.. math::` in docstrings (rendered in the browser)
    "sphinx.ext.viewcode",
]

# Each object on the page of the module that defines it: a package's page shows its
# own docstring and definitions instead of repeating what it re-exports.
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # NamedTuple "Attributes:" as fields, not a second description

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []


def _public_modules() -> list[str]:
  """Every public module of the package (no ``_private`` component), sorted."""
  import importlib
  import pkgutil

  package = importlib.import_module("reweight")
  names = ["reweight"] + [m.name for m in pkgutil.walk_packages(package.__path__, "reweight.")]
  return sorted(n for n in names if not any(p.startswith("_") for p in n.split(".")))


def _write_module_pages() -> None:
  """One ``api/<module>.rst`` page per module (gitignored, rewritten at every build).

  Written here rather than by autosummary: several packages re-export a function under the
  name of the module that defines it (``reweight.reparam.lora``), which autosummary would
  document as the function instead of the module.
  """
  api = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api")
  os.makedirs(api, exist_ok=True)
  pages = {}
  for name in _public_modules():
    pages[name + ".rst"] = f"{name}\n{'=' * len(name)}\n\n.. automodule:: {name}\n"
  for old in set(os.listdir(api)) - set(pages):
    os.remove(os.path.join(api, old))
  for file, text in pages.items():
    path = os.path.join(api, file)
    if not os.path.exists(path) or open(path).read() != text:
      with open(path, "w") as f:
        f.write(text)


_write_module_pages()
