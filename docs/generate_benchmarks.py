"""Render ``benchmarks/results/*.json`` as reStructuredText tables for the docs.

Called by ``docs/conf.py`` at build time, so the benchmarks page always shows the
committed measurements and is never typed by hand. Quick (CI-sized) results are left
out.
"""

from __future__ import annotations

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

TITLES = {
    "step_cost": "Cost of one TDLRT step (benchmarks/step_cost.py)",
    "training_step": "Time of one training step (benchmarks/training_step.py)",
}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_cell(v) for v in value) + ")"
    if isinstance(value, dict):  # e.g. ranks per layer: short, or summarised
        if len(value) <= 4:
            return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
        distinct = {_cell(v) for v in value.values()}
        if len(distinct) == 1:
            return f"{len(value)} x {distinct.pop()}"
        return f"{len(value)} entries"
    if value is None:
        return ""
    return str(value).replace("|", "/")


def render(payload: dict, title: str) -> str:
    lines = [title, "-" * len(title), ""]
    machine = payload.get("machine", {})
    facts = [
        f"{key} {machine[key]}"
        for key in (
            "date",
            "commit",
            "processor",
            "cpu_count",
            "torch_threads",
            "gpu",
            "python",
            "numpy",
            "torch",
            "tensorly",
        )
        if machine.get(key) is not None
    ]
    if facts:
        lines += ["Measured with: " + ", ".join(facts) + ".", ""]
    if payload.get("note"):
        lines += [payload["note"], ""]
    rows = payload.get("rows") or []
    if rows:
        columns: list[str] = []
        for row in rows:
            columns += [key for key in row if key not in columns]
        lines += [".. list-table::", "   :header-rows: 1", ""]
        lines.append("   * - " + "\n     - ".join(columns))
        for row in rows:
            lines.append(
                "   * - " + "\n     - ".join(_cell(row.get(c, "")) for c in columns)
            )
        lines.append("")
    return "\n".join(lines)


def write(target: pathlib.Path) -> pathlib.Path:
    parts = []
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem.endswith("_quick"):
            continue
        payload = json.loads(path.read_text())
        parts.append(render(payload, TITLES.get(path.stem, path.stem)))
    if not parts:
        parts.append("No benchmark results are committed yet.\n")
    target.write_text("\n".join(parts))
    return target


if __name__ == "__main__":
    print(write(pathlib.Path(__file__).resolve().parent / "benchmark_tables.inc"))
