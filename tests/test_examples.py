"""The README's demo runs and its printed numbers satisfy the tolerance guarantee."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_indian_pines_demo_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "approximate_indian_pines.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    table = [row for row in rows if row and row[0].replace(".", "").isdigit()]
    assert len(table) == 5
    for row in table:
        tol, error = float(row[0]), float(row[-4])
        assert error <= tol
    assert "budget 20,000" in result.stdout
