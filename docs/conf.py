"""Sphinx configuration for the tuckerflow documentation."""

from __future__ import annotations

import pathlib
import sys

import tuckerflow

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

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
exclude_patterns = ["_build", "generated/*.rst.bak", "figures"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {
    "description": "Geometry-aware, rank-adaptive training of Tucker tensors",
    "fixed_sidebar": True,
}


def _generate(app) -> None:
    """Build-time content: figures from real runs, tables from the result files."""
    import generate_benchmarks
    from figures import make_figures

    make_figures.main(HERE / "_static" / "figures")
    generate_benchmarks.write(HERE / "benchmark_tables.inc")


def setup(app):
    app.connect("builder-inited", _generate)
