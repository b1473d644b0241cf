"""The quick variants of the benchmark scripts run and write their result files, so the
scripts cannot rot. (Their numbers are measurements, not assertions.)"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(script, tmp_path, *args):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / script),
            "--quick",
            "--out",
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT / "benchmarks",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_step_cost_quick(tmp_path):
    out = _run("step_cost.py", tmp_path, "--backends", "numpy")
    payload = json.loads((tmp_path / "step_cost_quick.json").read_text())
    assert payload["machine"]["tensorly"] and len(payload["rows"]) == 4
    for row in payload["rows"]:
        phases = sum(
            row[f"{p}_ms"]
            for p in ("contractions", "augmentation", "core step", "truncation")
        )
        assert 0 < phases <= 1.5 * row["step_ms"] + 1.0
    assert "mode prod ms" in out
