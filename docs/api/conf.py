"""Sphinx configuration of fljax's API reference, generated from the docstrings.

Build (``pip install -e '.[docs]'``)::

    python -m sphinx -b html -W --keep-going docs/api docs/api/_build

Every public module of the package gets a page (``generated/<module>.rst``, written here at
each build: a module added later is documented without editing these files), each object
documented once, in the module that defines it.
"""

import importlib.util
import os
import pkgutil
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

import fljax  # noqa: E402  (after the path: the checkout's fljax)

project = "fljax"
author = "the fljax authors"
version = release = fljax.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
# A package's __all__ re-exports are not repeated (each object once, where it is defined), and a
# class's "Attributes:" become fields of its entry.
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
# The interop modules import their framework; where it is not installed, it is mocked.
autodoc_mock_imports = [m for m in ("torch", "flwr") if importlib.util.find_spec(m) is None]
exclude_patterns = ["_build"]
html_theme = "alabaster"


def public_modules() -> list[str]:
    """fljax and its submodules, private ones (``_common``) left out."""
    names = ["fljax"] + [m.name for m in pkgutil.walk_packages(fljax.__path__, "fljax.")]
    return [n for n in names if not any(part.startswith("_") for part in n.split("."))]


def write_module_pages(folder: str) -> None:
    """One page per public module: its docstring and every object it defines."""
    os.makedirs(folder, exist_ok=True)
    for name in public_modules():
        with open(os.path.join(folder, f"{name}.rst"), "w") as f:
            f.write(f"{name}\n{'=' * len(name)}\n\n.. automodule:: {name}\n")


write_module_pages(os.path.join(os.path.dirname(__file__), "generated"))
