"""Sphinx configuration for the tuckerflow documentation."""

from __future__ import annotations

import tuckerflow

project = "tuckerflow"
author = "tuckerflow developers"
copyright = "2026, tuckerflow developers"
release = tuckerflow.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

autosummary_generate = True
autodoc_typehints = "none"  # numpydoc lists the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

templates_path = ["_templates"]
exclude_patterns = ["_build", "generated/*.rst.bak"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {
    "description": "Geometry-aware, rank-adaptive training of Tucker tensors",
    "fixed_sidebar": True,
}
