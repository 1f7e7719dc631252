"""Sphinx configuration for the taskvisor documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from os.path import abspath

sys.path.insert(0, abspath("../src"))

import taskvisor

# -- project ---------------------------------------------------------------------------

project = "taskvisor"
author = "the taskvisor authors"
copyright = "the taskvisor authors"
release = taskvisor.__version__
version = ".".join(release.split(".")[:2])

# -- general ---------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",  # no intersphinx_mapping: the build needs no network
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
nitpicky = False
pygments_style = "sphinx"

# -- autodoc ---------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autoclass_content = "class"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False

# -- html ------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"taskvisor {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "An asyncio-native scheduling runtime",
    "fixed_sidebar": True,
}
