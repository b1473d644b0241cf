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
html_theme = "pydata_sphinx_theme"  # as NumPy and SciPy
html_title = "tuckerflow"
html_static_path = ["_static"]
html_css_files = ["tuckerflow.css"]
html_theme_options = {
    "logo": {"text": "tuckerflow"},
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# no left sidebar on the single pages: the tables get the width
html_sidebars = {
    page: [] for page in ("index", "getting_started", "concepts", "howto", "benchmarks")
}


def _generate(app) -> None:
    """Build-time content: figures from real runs, tables from the result files."""
    import generate_benchmarks
    from figures import make_figures
    from sphinx.util import logging

    make_figures.main(HERE / "_static" / "figures")
    problems = generate_benchmarks.write(HERE / "benchmark_tables.inc")
    for problem in problems:  # a warning: `sphinx-build -W` (tox -e docs) fails
        logging.getLogger(__name__).warning(problem)


def setup(app):
    app.connect("builder-inited", _generate)
