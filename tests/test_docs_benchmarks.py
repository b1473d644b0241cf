"""The Benchmarks page (``docs/generate_benchmarks.py``): readable, fitting, current.

For every committed result file: the table's headers are short names (no raw JSON
key), the table fits the page (column count and a character-width bound), the study's
plot is on the page when it exists, and the summary's numbers are read from the JSON
(changing the JSON changes the page; a summary that no longer matches is reported,
which fails ``sphinx-build -W``).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load():
    spec = importlib.util.spec_from_file_location(
        "generate_benchmarks", ROOT / "docs" / "generate_benchmarks.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gb = _load()
FILES = gb.result_files()


def list_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(headers, rows) of every list-table in reStructuredText from the generator."""
    tables = []
    for block in re.split(r"\n\.\. list-table::\n", text)[1:]:
        rows: list[list[str]] = []
        for line in block.split("\n\n", 2)[1].splitlines():
            if line.startswith("   * - "):
                rows.append([line[7:]])
            elif line.startswith("     - "):
                rows[-1].append(line[7:])
        tables.append((rows[0], rows[1:]))
    return tables


def _constant(rows):
    return gb.table_columns(rows)[1]


def rendered(path: pathlib.Path) -> str:
    text, problems = gb.render(path.stem, json.loads(path.read_text()), None)
    assert problems == []
    return text


def test_there_are_results_to_render():
    assert {"lenet_compression", "ill_conditioning"} <= {p.stem for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_headers_are_short_names_not_json_keys(path):
    payload = json.loads(path.read_text())
    keys = {key for row in payload.get("rows", []) for key in row}
    ((headers, rows),) = list_tables(rendered(path))
    for head in headers:
        assert "_" not in head, f"raw JSON key {head!r} as a header"
    study = gb.STUDIES.get(path.stem)
    shown = study.rows(payload) if study and study.rows else payload["rows"]
    columns, _ = gb.table_columns(shown, study.columns if study else ())
    for key in keys & {*columns, *_constant(shown)}:  # raw keys that are shown
        assert key in gb.HEADERS, f"no short header for the JSON key {key!r}"
    for row in rows:
        for cell in row:  # per-layer dicts are summarised, not dumped
            assert "{" not in cell and "':" not in cell, cell


def test_mean_and_std_are_one_column():
    path = RESULTS / "lenet_compression.json"
    text = rendered(path)
    assert "converged_accuracy_std" not in text and "accuracy_std" not in text
    ((headers, rows),) = list_tables(text)
    column = headers.index("acc. % (mean ± std)")
    payload = json.loads(path.read_text())
    full = next(r for r in payload["rows"] if r["variant"] == "full")
    cell = next(r[column] for r in rows if r[0] == "full")
    assert cell == f"{full['accuracy_mean']:.2f} ± {full['accuracy_std']:.2f}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_table_fits_the_page(path):
    ((headers, rows),) = list_tables(rendered(path))
    assert len(headers) <= gb.MAX_COLUMNS, headers
    width = gb.table_width(headers, rows)
    assert width <= gb.MAX_WIDTH, f"{path.stem}: {width} characters wide"


def test_table_width_bound_can_fail():
    wide = [{f"column_{i}": "x" * 20 for i in range(9)}]
    headers, cells, _ = gb.table(wide)
    assert len(headers) > gb.MAX_COLUMNS
    assert gb.table_width(headers, cells) > gb.MAX_WIDTH


def test_every_plot_is_on_the_page():
    text, problems = gb.generate()
    assert problems == []
    pngs = [p for p in FILES if p.with_suffix(".png").exists()]
    assert pngs, "no study saved a plot"
    for path in FILES:
        directive = f".. figure:: ../benchmarks/results/{path.stem}.png"
        assert (directive in text) == (path in pngs), path.stem
    for image in re.findall(r"\.\. figure:: (\S+)", text):  # resolvable from docs/
        assert (ROOT / "docs" / image).resolve().is_file(), image


def test_every_study_says_claim_and_where_we_lose():
    text, _ = gb.generate()
    sections = text.split(".. _bench-")[1:]
    assert len(sections) == len(FILES)
    for path, section in zip(FILES, sections):
        if path.stem in gb.STUDIES:
            assert "**Claim" in section and "Where we lose" in section, path.stem


def _copy(tmp_path, stem):
    shutil.copy(RESULTS / f"{stem}.json", tmp_path / f"{stem}.json")
    return tmp_path / f"{stem}.json"


def test_summary_numbers_come_from_the_json(tmp_path):
    target = _copy(tmp_path, "lenet_compression")
    payload = json.loads(target.read_text())
    for row in payload["rows"]:
        if row["variant"] == "full":
            row["accuracy_mean"], row["weights_mean"] = 12.345, 987_654.0
    target.write_text(json.dumps(payload))
    text, problems = gb.generate(tmp_path)
    assert problems == []
    claim = next(line for line in text.splitlines() if "**Claim.**" in line)
    assert "987,654" in claim and "(12.35 ± " in claim


def test_a_stale_summary_is_reported(tmp_path):
    target = _copy(tmp_path, "lenet_compression")
    payload = json.loads(target.read_text())
    for row in payload["rows"]:
        row["variant"] = row["variant"].replace("full", "dense")
    target.write_text(json.dumps(payload))
    text, problems = gb.generate(tmp_path)
    assert len(problems) == 1 and "lenet_compression" in problems[0]
    assert ".. list-table::" in text  # the table is still shown


def test_quick_results_and_unknown_studies(tmp_path):
    (tmp_path / "lenet_compression_quick.json").write_text('{"rows": [{"a": 1}]}')
    (tmp_path / "new_study.json").write_text(
        '{"rows": [{"wall_ms": 1.5, "ranks": {"a": [1, 2], "b": [3, 4]}}]}'
    )
    text, problems = gb.generate(tmp_path)
    assert problems == [] and "quick" not in text
    ((headers, rows),) = list_tables(text)
    assert headers == ["wall ms", "ranks per layer"]
    assert rows == [["1.50", "1\N{MULTIPLICATION SIGN}2 / 3\N{MULTIPLICATION SIGN}4"]]


def test_framing_text_holds_no_numbers():
    """Numbers belong in the summaries, computed from the JSON, never typed."""
    allowed = re.compile(r"LeNet-5|ResNet-20|MiniLM-L6|Figure 2|Conv2d|MobileNetV2")
    for stem, study in gb.STUDIES.items():
        for text in (study.title, study.framing, study.caption, study.legend):
            assert not re.search(r"\d", allowed.sub("", text)), (stem, text)


def _pareto_payload(budget50_accuracy: float) -> dict:
    """A three-seed transformer Pareto result (the shape the script writes)."""
    per_rank = 6 * (4 * 768 + 2 * 1920)

    def row(variant, size, accuracy, step):
        return {
            "variant": variant,
            "seeds": 3,
            "accuracy_mean": accuracy,
            "accuracy_std": 0.5,
            "adapter_parameters": size,
            "adapters_vs_lora8": size / (8 * per_rank),
            "trainable_parameters": size + 1925,
            "step_vs_lora8": step,
            "seconds": 100.0,
            "adapter_ranks": {},
        }

    rows = [row(f"lora-r{r}", r * per_rank, 90.0 + r / 4, 1.0) for r in (2, 4, 8, 16)]
    rows += [
        row(f"tucker-budget{p}", round(p / 100 * 8 * per_rank) - 9, acc, 1.3)
        for p, acc in ((25, 89.0), (50, budget50_accuracy), (70, 92.0), (100, 93.0))
    ]
    return {"epochs": 1, "tokens": 64, "test_size": 448, "rows": rows}


@pytest.mark.parametrize(
    ("budget50", "verdict"),
    [
        (92.5, "Goal reached: ``tucker-budget50`` (92.50 ± 0.50% with 50%"),
        (
            91.5,
            "Goal not reached: the best Tucker variant at 50% or less, "
            "``tucker-budget50``",
        ),
    ],
)
def test_transformer_summary_states_the_goal_plainly(budget50, verdict):
    claim, at_sizes, lose = gb._transformer_summary(_pareto_payload(budget50))
    assert verdict in claim and "LoRA r=8's 92.00 ± 0.50% (3 seeds)" in claim
    if budget50 < 92:  # 0.5 points apart, the two std combined are 0.71
        assert "within the spread of the seeds" in claim and "0.71 points" in claim
    assert "``tucker-budget25`` 89.00 ± 0.50% against ``lora-r2`` 90.50" in at_sizes
    assert "``tucker-budget25`` trails ``lora-r2`` by 1.50 points" in lose
    assert f"1.30{gb.TIMES} (``tucker-budget25``)" in lose
    ((headers, rows),) = list_tables(
        gb.render("transformer_adapters", _pareto_payload(budget50), None)[0]
    )
    assert [r[0] for r in rows][:5] == [
        "lora-r2",
        "lora-r4",
        "lora-r8",
        "lora-r16",
        "tucker-budget25",
    ]
    assert f"step {gb.TIMES} LoRA r=8" in headers


def test_conv_adapter_sweep_shows_mean_and_std_at_the_best_lr():
    # the committed sweep with two lrs per variant and known validation accuracies
    payload = json.loads((RESULTS / "conv_adapters.json").read_text())
    runs, rows = [], []
    for row in payload["rows"]:
        for lr, shift in ((1e-3, 0.0), (3e-3, 0.01)):
            runs.append(
                {**row, "lr": lr, "seed": 0, "validation_accuracy": 0.5 + shift}
            )
        rows.append({**row, "lr": 3e-3, "seeds": 3, "accuracy_std": 0.25})
    payload |= {
        "rows": rows,
        "runs": runs,
        "seeds": [0, 1, 2],
        "validation_size": 5000,
        "grids": {f: [1e-3, 3e-3] for f in ("head", "lora", "tucker", "full")},
    }
    text, problems = gb.render("conv_adapters", payload)
    assert problems == []
    ((headers, cells),) = list_tables(text)
    column = headers.index("acc. % (mean ± std)")
    lora = next(r for r in payload["rows"] if r["variant"] == "lora-r4")
    cell = next(r[column] for r in cells if r[0] == "lora-r4")
    assert cell == f"{lora['accuracy_mean']:.2f} ± 0.25"
    assert "``lora-r4`` 50.0 / **51.0**" in text  # the sweep, chosen lr in bold
    assert "at an end of the grid" in text and "3 seeds and one epoch" in text


@pytest.mark.parametrize(
    ("tucker_mean", "verdict"),
    [
        (85.0, "trail LoRA r=4 by 1.50 points, within the seeds' spread"),
        (83.0, "trail LoRA r=4 by 3.50 points, beyond the seeds' spread"),
        (87.0, "match or beat LoRA r=4 (by 0.50 points)"),
    ],
)
def test_conv_adapter_head_apart_summary_reads_the_gap(tucker_mean, verdict):
    def row(variant, lr, mean, trainable):
        return {
            "variant": variant,
            "lr": lr,
            "seeds": 3,
            "accuracy_mean": mean,
            "accuracy_std": 1.5,
            "trainable_parameters": trainable,
            "adapter_parameters": trainable - 1290,
            "adapter_budget": None,
            "median_step_ms": 80.0,
            "step_vs_lora": 1.0,
            "adapter_ranks": {},
        }

    rows = [
        row("lora-r4", 1e-2, 86.5, 15918),
        row("tucker-budget", 0.1, tucker_mean, 15771),
    ]
    runs = [
        {**r, "seed": 0, "lr": lr, "validation_accuracy": 0.8 + (lr == r["lr"]) / 10}
        for r in rows
        for lr in (
            (1e-3, 3e-3, 1e-2, 3e-2)
            if r["variant"] == "lora-r4"
            else (1e-2, 3e-2, 1e-1, 3e-1)
        )
    ]
    payload = {
        "model": "ccexam",
        "head_lr": 3e-3,
        "rows": rows,
        "runs": runs,
        "seeds": [0, 1, 2],
        "validation_size": 5000,
        "grids": {"lora": [1e-3, 3e-3, 1e-2, 3e-2], "tucker": [1e-2, 3e-2, 1e-1, 3e-1]},
    }
    text, problems = gb.render("conv_adapters_head_apart", payload)
    assert problems == []
    assert verdict in text
    assert "at lr 0.003" in text and "at adapter lr 0.1" in text
    assert "``tucker-budget`` 80.0 / 80.0 / **90.0** / 80.0" in text
    assert "end of the grid" not in text  # both best rates are inside their grids
