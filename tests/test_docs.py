"""Every Python code block of the documentation runs, so the docs cannot drift.

Blocks of one page run in order in one namespace (later blocks may use earlier
names). Shell blocks are not run here; the README's commands are what CI runs.
"""

from __future__ import annotations

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p for p in DOCS.glob("*.rst"))


def python_blocks(text: str) -> list[str]:
    blocks, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        if re.match(r"\s*\.\. code-block:: python\s*$", lines[index]):
            index += 1
            body = []
            while index < len(lines) and (
                not lines[index].strip() or lines[index].startswith("   ")
            ):
                body.append(lines[index][3:])
                index += 1
            blocks.append("\n".join(body).strip("\n"))
        else:
            index += 1
    return blocks


def test_the_docs_have_examples():
    counts = {page.name: len(python_blocks(page.read_text())) for page in PAGES}
    assert counts["getting_started.rst"] >= 4 and counts["howto.rst"] >= 2


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_code_blocks_run(page, capsys):
    pytest.importorskip("torch")
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(python_blocks(page.read_text())):
        try:
            # dont_inherit: run as a user's script, not under this file's
            # ``from __future__ import annotations`` (dataclasses would look up
            # the string annotations in a module that does not exist)
            code = compile(
                block, f"{page.name}[block {number}]", "exec", dont_inherit=True
            )
            exec(code, namespace)
        except Exception as error:  # name the block that failed
            raise AssertionError(
                f"{page.name}, block {number} failed:\n{block}"
            ) from error
    capsys.readouterr()


def test_concepts_page_holds_the_properties_the_tests_cite():
    """Test modules and docstrings point to P1-P8 and the step on the concepts page."""
    text = (DOCS / "concepts.rst").read_text()
    for label in (
        "p1-projection",
        "p2-exactness",
        "p3-descent",
        "p4-robustness",
        "p5-approximation",
        "p6-convergence",
        "p7-backends",
        "p8-invariants",
        "tdlrt-step",
        "tolerance",
        "parameter-budget",
    ):
        assert f"\n.. _{label}:\n" in text, label
    assert ".. math::" in text and "[TDLRT24]_" in text


def test_nothing_points_to_the_private_notes():
    """The mathematics is in docs/concepts.rst, not in a file outside the repo."""
    root = DOCS.parent
    private = "THEORY" + ".md"
    files = [root / "README.md"] + [
        path
        for folder in ("tuckerflow", "tests", "docs", "examples", "benchmarks")
        for path in (root / folder).rglob("*")
        if path.suffix in {".py", ".rst", ".md"} and "_build" not in path.parts
    ]
    offenders = [str(p.relative_to(root)) for p in files if private in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize("module", ["tuckerflow", "tuckerflow.nn"])
def test_every_public_name_is_in_the_api_reference(module):
    import importlib

    api = (DOCS / "api.rst").read_text()
    listed = set(re.findall(r"^ {3}([\w.]+)\s*$", api, re.MULTILINE))
    names = importlib.import_module(module).__all__
    missing = [name for name in names if name not in listed]
    assert not missing, f"add {missing} to docs/api.rst (autosummary of {module})"
