"""Render ``benchmarks/results/*.json`` as the docs' Benchmarks page.

Called by ``docs/conf.py`` at build time, so the page always shows the committed
measurements. For every study: a hand-written framing sentence (no numbers), a short
summary whose every number is computed here from the JSON (the claim, the number,
where we lose), the study's plot (``benchmarks/results/<study>.png``, when it exists)
and a compact table: mean and standard deviation merged into one column, internal
columns dropped, per-layer rank dicts summarised, columns that are the same in every
row stated once below the table, and short headers with units.

Quick (CI-sized) results are left out. A result file of an unknown study is still
rendered, with the generic table rules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import statistics
from collections.abc import Callable, Sequence
from typing import Any

TIMES = "\N{MULTIPLICATION SIGN}"
ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"

# ---------------------------------------------------------------------------- columns

#: Short header (with units) for every JSON row key of the committed studies. A key
#: missing here is shown as its words (and ``tests/test_docs_benchmarks.py`` fails).
HEADERS = {
    # compression studies
    "variant": "variant",
    "runs": "diverged / runs",
    "accuracy": "acc. %",
    "accuracy_mean": "acc. % (mean ± std)",
    "converged_accuracy_mean": "acc. % without diverged runs",
    "weights_mean": "weights",
    "compressed": "compressed % (all / conv)",
    "median_step_ms": "step (ms)",
    # pretrained
    "tol": "tol",
    "start": "HOSVD start",
    "compression": "compressed %",
    "ranks": "ranks per layer",
    # transformer
    "trainable_parameters": "trainable params",
    "adapter_parameters": "adapter params",
    "parameters_vs_lora": "params / LoRA's",
    "adapters_vs_lora8": "adapters / LoRA r=8",
    "step_vs_lora8": f"step {TIMES} LoRA r=8",
    "adapter_ranks": "adapter ranks",
    "seconds": "time (s)",
    # conv adapters
    "step_vs_lora": f"step {TIMES} LoRA r=4",
    "lr": "lr",
    # conv adapters diagnosis
    "update_norm": "‖ΔW‖ (F)",
    "update_sigma": "σ₁ / σ₂ / σ₃ / σ₄ of ΔW",
    # ill-conditioning (pivoted: one column per learning rate)
    "method": "method",
    # timing studies
    "case": "set-up",
    "ms": "step (ms)",
    "update_ms": "update (ms)",
    "ratio_to_full": f"{TIMES} dense step",
    "network": "network",
    "rank": "rank",
    "median_ms": "step (ms)",
    "peak_memory_mib": "peak memory (MiB)",
    "qr_svd_truncation_fraction": "QR/SVD share %",
    "backend": "backend",
    "shape": "shape",
    "step_ms": "step (ms)",
    "ratio": f"{TIMES} one mode product",
    "mode_product_ms": "mode product (ms)",
    "phases": "contractions / QR / core / truncation (ms)",
    "work": "m·n·min(m, n)",
    "factorization": "factorization",
    "backend_ms": "backend (ms)",
    "host_ms": "host (ms)",
    "host_over_backend": "host / backend",
    "workers": "workers",
    "threads_per_worker": "threads per worker",
    "images_per_second": "images / s",
    "speedup": "speed-up",
    "test_accuracy": "test acc. %",
    "steps": "steps",
    "global_batch": "global batch",
    "seed": "seed",
    "train_size": "training examples",
    "test_size": "test examples",
    # peers
    "problem": "problem",
    "library": "library",
    "iterations": "iterations",
    "evaluations": "evals",
    "best_error": "best held-out error",
    "final_rank": "final rank",
    "failure": "failure",
    # update cost (targets of the fast update)
    "batch": "batch",
    "dense_ms": "dense (ms)",
    "vanilla_ms": "vanilla (ms)",
    "tdlrt_factorized_ms": "TDLRT fact. (ms)",
    "tdlrt_dense_ms": "TDLRT dense fwd (ms)",
    "tdlrt_vs_vanilla": "TDLRT / vanilla",
    "tdlrt_vs_dense": "TDLRT / dense",
    # basis_update_every
    "k": "steps per basis update",
    "augment_ms": "augmenting step (ms)",
    "galerkin_ms": "Galerkin step (ms)",
    "truncate_ms": "truncating step (ms)",
    "stored": "stored weights",
}

#: Keys never shown as columns: per-epoch curves, diagnostics, bookkeeping, and the
#: halves of merged columns.
DROP = {
    "accuracy_per_epoch",
    "last3_epoch_swing",
    "level",  # the target; "compression" is what was reached
    "curves",
    "accuracy_std",
    "converged_accuracy_std",
    "seeds",
    "diverged",
    "compression_all",
    "compression_conv",
    "adapter_budget",
    "validation_accuracy",
    "contractions_ms",
    "augmentation_ms",
    "core step_ms",
    "truncation_ms",
}

#: Values stored as fractions of one, shown in percent.
PERCENT = {
    "compression",
    "qr_svd_truncation_fraction",
    "test_accuracy",
    "accuracy",  # fractions in pretrained/transformer; percents elsewhere (see _pct)
}

#: Values shown as given (settings, not measurements).
EXACT = {"tol", "lr", "level"}

MAX_COLUMNS = 8
MAX_WIDTH = 110  # characters, see table_width


def _num(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, without an exponent for ordinary sizes."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 6 or magnitude < -3:
        return f"{value:.{digits - 1}e}".replace("e+0", "e+").replace("e-0", "e-")
    decimals = max(digits - 1 - magnitude, 0)
    text = f"{value:,.{decimals}f}"
    return text


def _pct(value: float, digits: int = 1) -> str:
    """A fraction of one (or a value already in percent, above 1) in percent."""
    if value is None:
        return ""
    return f"{100 * value if abs(value) <= 1 else value:.{digits}f}"


def _ranks(value: Any) -> str:
    """A rank tuple ``[9, 1, 3, 3]`` as ``9 x 1 x 3 x 3`` (multiplication signs)."""
    if isinstance(value, (list, tuple)):
        return TIMES.join(str(v) for v in value)
    return str(value)


def _rank_dict(value: dict) -> str:
    """Per-layer ranks: all of them when few, else a range and the median."""
    if not value:
        return "dense"
    if len(value) <= 4:
        return " / ".join(_ranks(v) for v in value.values())
    firsts = [v[0] if isinstance(v, (list, tuple)) else v for v in value.values()]
    if len(set(map(str, value.values()))) == 1:
        return f"{len(value)} layers, all {_ranks(next(iter(value.values())))}"
    return (
        f"{min(firsts)}-{max(firsts)} (median {statistics.median(firsts):g}), "
        f"{len(value)} layers"
    )


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return _rank_dict(value)
    if isinstance(value, (list, tuple)):
        return _ranks(value)
    if isinstance(value, str):
        return value.replace("|", "/")
    if key in EXACT and isinstance(value, float):
        return f"{value:g}"
    if key in PERCENT and isinstance(value, float):
        return _pct(value, 2 if "accuracy" in key else 1)
    if isinstance(value, float) and key.endswith("ms") and value >= 1:
        return _num(value, 3)
    return _num(value)


# --------------------------------------------------------------------------- studies


@dataclasses.dataclass
class Study:
    """How one result file is presented."""

    title: str
    framing: str  # hand-written, no numbers
    script: str
    summary: Callable[[dict], list[str]] | None = None
    rows: Callable[[dict], list[dict]] | None = None  # row transform before the table
    caption: str = ""  # below the plot, no numbers
    columns: Sequence[str] = ()  # these first, in this order; then any others
    legend: str = ""  # below the table, no numbers


def _by(rows: Sequence[dict], key: str) -> dict[Any, dict]:
    return {row.get(key): row for row in rows}


def _range(values: Sequence[float], fmt: Callable[[float], str] = _num) -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}-{high}"


def _pm(row: dict, key: str) -> str:
    return f"{row[key + '_mean']:.2f} ± {row[key + '_std']:.2f}"


# compression studies (LeNet-5, small VGG) ------------------------------------------


def _compression_rows(payload: dict) -> list[dict]:
    def order(row: dict) -> tuple:
        name = str(row.get("variant", ""))
        group = 0 if name == "full" else 1 if name.startswith("tdlrt") else 2
        return (group, -row.get("weights_mean", 0) if group == 1 else 0)

    out = []
    for row in sorted(payload.get("rows", []), key=order):
        row = dict(row)
        if "seeds" in row:
            row["runs"] = f"{row.get('diverged', 0)} / {row['seeds']}"
        if "accuracy_mean" in row and "accuracy_std" in row:
            row["accuracy_mean"] = _pm(row, "accuracy")
        if "converged_accuracy_mean" in row:
            row["converged_accuracy_mean"] = (
                _pm(row, "converged_accuracy") if row.get("diverged") else "same"
            )
        if "compression_all" in row:
            row["compressed"] = (
                f"{_pct(row['compression_all'])} / {_pct(row.get('compression_conv'))}"
            )
        if "weights_mean" in row:
            row["weights_mean"] = round(row["weights_mean"])
        out.append(row)
    return out


def _compression_summary(payload: dict) -> list[str]:
    rows = payload["rows"]
    variants = _by(rows, "variant")
    full = variants["full"]
    tdlrt = [r for r in rows if str(r["variant"]).startswith("tdlrt")]
    # the claim: the TDLRT run closest to the dense accuracy among the >= 90% ones
    strong = [r for r in tdlrt if r["compression_all"] >= 0.9] or tdlrt
    best = max(strong, key=lambda r: r["accuracy_mean"])
    out = [
        f"**Claim.** Trained from scratch, TDLRT (``{best['variant']}``) reaches "
        f"{_pm(best, 'accuracy')}% test accuracy with {round(best['weights_mean']):,} "
        f"weights, {_pct(best['compression_all'])}% fewer than the dense network's "
        f"{round(full['weights_mean']):,} ({_pm(full, 'accuracy')}%)."
    ]
    baselines = [r for r in rows if r["variant"] not in ("full",) and r not in tdlrt]
    if baselines:
        parts = []
        for r in baselines:
            text = f"``{r['variant']}`` {r['converged_accuracy_mean']:.2f}%"
            if r.get("diverged"):
                text += f" ({r['diverged']} of {r['seeds']} runs diverged, not counted)"
            parts.append(text)
        out.append(
            "**Against factor SGD** at the ranks TDLRT ended with: "
            + ", ".join(parts)
            + "."
        )
    worst = max(tdlrt, key=lambda r: r["compression_all"])
    lose = (
        f"**Where we lose.** The dense network stays "
        f"{full['accuracy_mean'] - best['accuracy_mean']:.2f} points ahead."
    )
    if worst is not best:
        lose += (
            f" Pushed further, ``{worst['variant']}`` "
            f"({_pct(worst['compression_all'])}% compression) drops to "
            f"{_pm(worst, 'accuracy')}%."
        )
    fast = min(baselines, key=lambda r: r["median_step_ms"]) if baselines else None
    if fast is not None and fast["median_step_ms"] < best["median_step_ms"]:
        lose += (
            f" A TDLRT step ({best['median_step_ms']:.0f} ms) is slower than "
            f"``{fast['variant']}``'s ({fast['median_step_ms']:.0f} ms)."
        )
    out.append(lose)
    return out


def _baselines_summary(payload: dict) -> list[str]:
    """The compression claim, then every baseline family at the same size (ResNet)."""
    rows = payload["rows"]
    full = _by(rows, "variant")["full"]
    tdlrt = [r for r in rows if str(r["variant"]).startswith("tdlrt")]
    strong = [r for r in tdlrt if r["compression_all"] >= 0.9] or tdlrt
    best = max(strong, key=lambda r: r["accuracy_mean"])
    out = _compression_summary({**payload, "rows": [full, *tdlrt]})[:1]
    others = [r for r in rows if r is not full and r not in tdlrt]
    if others:
        parts = []
        for r in others:
            text = (
                f"``{r['variant']}`` {_pm(r, 'accuracy')}% "
                f"({_pct(r['compression_all'])}%)"
            )
            if r.get("diverged"):
                text += f", {r['diverged']} of {r['seeds']} runs diverged"
            parts.append(text)
        out.append(
            "**Against every baseline family** (compression of all weights in "
            "brackets): " + ", ".join(parts) + "."
        )
    gap = full["accuracy_mean"] - best["accuracy_mean"]
    lose = [
        f"The dense network stays {gap:.2f} points ahead."
        if gap > 0
        else f"The dense network trails here, by {-gap:.2f} points."
    ]
    ahead = [r for r in others if r["accuracy_mean"] > best["accuracy_mean"]]
    if ahead:
        lose.append(
            "Ahead of ``"
            + best["variant"]
            + "``: "
            + ", ".join(
                f"``{r['variant']}`` by "
                f"{r['accuracy_mean'] - best['accuracy_mean']:.2f} points"
                for r in ahead
            )
            + "."
        )
    fast = min(others, key=lambda r: r["median_step_ms"]) if others else None
    if fast is not None and fast["median_step_ms"] < best["median_step_ms"]:
        lose.append(
            f"A TDLRT step ({best['median_step_ms']:.0f} ms) is slower than "
            f"``{fast['variant']}``'s ({fast['median_step_ms']:.0f} ms)."
        )
    out.append("**Where we lose.** " + " ".join(lose))
    return out


# pretrained CNN ------------------------------------------------------------------


def _budget_best(payload: dict) -> dict[tuple[float, str], dict]:
    """Budget mode: per (level kept, method) the best seed-0 learning rate, with the
    accuracies of every seed run there (mean and standard deviation)."""
    runs = [r for r in payload.get("budget_rows", []) if "lr" in r]
    best: dict[tuple[float, str], dict] = {}
    for row in runs:
        key = (row["kept"], row["method"])
        if row["seed"] == 0 and (
            key not in best or row["accuracy"] > best[key]["accuracy"]
        ):
            best[key] = row
    out = {}
    for key, row in best.items():
        accs = [
            100 * r["accuracy"]
            for r in runs
            if (r["kept"], r["method"], r["lr"]) == (*key, row["lr"])
        ]
        out[key] = {
            "lr": row["lr"],
            "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "seeds": len(accs),
            "grid": sorted({r["lr"] for r in runs if (r["kept"], r["method"]) == key}),
        }
    return out


def _pretrained_rows(payload: dict) -> list[dict]:
    """One row per tolerance or budget level, one accuracy column per method (budget
    levels: mean ± std over the seeds at the method's best learning rate)."""
    table: dict[Any, dict] = {}
    for row in payload.get("rows", []):
        if not row.get("ranks"):  # the dense reference: in the summary
            continue
        entry = table.setdefault(
            row["tol"],
            {
                "start": f"tol {row['tol']:g}",
                "compression": row["compression"],
                "ranks": row["ranks"],
            },
        )
        entry[f"acc. % {row['method'].removesuffix(' 1 epoch')}"] = (
            f"{100 * row['accuracy']:.2f}"
        )
    best = _budget_best(payload)
    for row in payload.get("budget_rows", []):
        if row["method"] != "HOSVD only":
            continue
        entry = {
            "start": f"{_pct(row['kept'], 0)}% kept",
            "compression": row["compression"],
            "ranks": row["ranks"],
            "acc. % HOSVD only": f"{100 * row['accuracy']:.2f}",
        }
        for (kept, method), b in best.items():
            if kept == row["kept"]:
                entry[f"acc. % {method}"] = f"{b['mean']:.2f} ± {b['std']:.2f}"
        table[("kept", row["kept"])] = entry
    return list(table.values())


def _pretrained_summary(payload: dict) -> list[str]:
    rows = payload["rows"]
    dense = next(r for r in rows if not r["ranks"])
    by = {(r["tol"], r["method"]): r for r in rows if r["ranks"]}
    tols = sorted({tol for tol, _ in by})
    top = tols[-1]
    hosvd = by[(top, "HOSVD only")]
    tdlrt = [r for r in rows if r["method"].startswith("TDLRT")]
    vanilla = [r for r in rows if r["method"].startswith("vanilla")]
    at_top = next(r for r in tdlrt if r["tol"] == top)
    out = [
        f"**Claim.** One epoch of TDLRT fine-tuning ends at "
        f"{_range([100 * r['accuracy'] for r in tdlrt], lambda v: f'{v:.2f}')}% for "
        f"every tolerance, against {100 * dense['accuracy']:.2f}% for the dense "
        f"pretrained network; at tol {top} ({_pct(hosvd['compression'])}% of the "
        f"tuckerized weights removed) it reaches {100 * at_top['accuracy']:.2f}% "
        f"where the HOSVD alone gives {100 * hosvd['accuracy']:.2f}%."
    ]
    if vanilla:
        low = min(vanilla, key=lambda r: r["accuracy"])
        out.append(
            f"**Against factor SGD.** Plain SGD on the factors at the same ranks ends "
            f"at {_range([100 * r['accuracy'] for r in vanilla], lambda v: f'{v:.2f}')}"
            f"%: at tol {low['tol']} it collapsed to {100 * low['accuracy']:.2f}%."
        )
    best = _budget_best(payload)
    levels = sorted({kept for kept, _ in best}, reverse=True)
    behind = []
    for kept in levels:
        methods = {m: b for (k, m), b in best.items() if k == kept}
        hosvd_row = next(
            r
            for r in payload["budget_rows"]
            if r["kept"] == kept and r["method"] == "HOSVD only"
        )
        parts = ", ".join(
            f"{m} {b['mean']:.2f} ± {b['std']:.2f}% (lr {b['lr']:g}, "
            f"{b['seeds']} seeds)"
            for m, b in methods.items()
        )
        out.append(
            f"**Budget {_pct(kept, 0)}% kept** (HOSVD alone "
            f"{100 * hosvd_row['accuracy']:.2f}%), each method at its best learning "
            f"rate: {parts}."
        )
        sweep = []
        for m, b in methods.items():
            accs = {
                r["lr"]: 100 * r["accuracy"]
                for r in payload["budget_rows"]
                if r["kept"] == kept and r["method"] == m and r.get("seed") == 0
            }
            sweep.append(
                f"{m}: " + ", ".join(f"{lr:g} → {accs[lr]:.2f}" for lr in b["grid"])
            )
        out.append(
            f"Learning-rate sweep at {_pct(kept, 0)}% kept (seed 0, lr → acc. %): "
            + "; ".join(sweep)
            + "."
        )
        vanilla_best = methods.get("vanilla")
        tdlrt_best = methods.get("TDLRT")
        if vanilla_best and tdlrt_best and vanilla_best["mean"] > tdlrt_best["mean"]:
            behind.append(
                f"at {_pct(kept, 0)}% kept TDLRT with one learning rate "
                f"({tdlrt_best['mean']:.2f}%) stays "
                f"{vanilla_best['mean'] - tdlrt_best['mean']:.2f} points behind "
                f"vanilla at its best ({vanilla_best['mean']:.2f}%)"
            )
    lose = "**Where we lose.** "
    if behind:
        text = "; ".join(behind)
        lose += text[0].upper() + text[1:] + "."
    else:
        lose += (
            f"At the tolerances this network compresses modestly (at most "
            f"{_pct(max(r['compression'] for r in rows))}% of its tuckerized weights)"
        )
        if levels:
            lowest = levels[-1]
            top_acc = max(b["mean"] for (k, _), b in best.items() if k == lowest)
            lose += (
                f"; at {_pct(lowest, 0)}% kept the best one-epoch accuracy "
                f"({top_acc:.2f}%) is "
                f"{100 * dense['accuracy'] - top_acc:.2f} points below the dense "
                f"network"
            )
        lose += "."
    out.append(lose)
    return out


# transformer adapters ---------------------------------------------------------------


TRANSFORMER_COLUMNS = (
    "variant",
    "accuracy_mean",
    "adapter_parameters",
    "adapters_vs_lora8",
    "trainable_parameters",
    "step_vs_lora8",
    "adapter_ranks",
)


def _mean_std(row: dict, key: str = "accuracy") -> str:
    """``mean ± std`` (two decimals); the mean alone for one seed."""
    if row.get(key + "_std") is None:
        return f"{row[key + '_mean']:.2f}"
    return _pm(row, key)


def _transformer_rows(payload: dict) -> list[dict]:
    """The shown columns, mean and std in one cell; LoRA by rank, then Tucker by
    budget."""

    def order(row: dict) -> tuple:
        name = row["variant"]
        return (not name.startswith("lora"), name == "full", row["adapter_parameters"])

    out = []
    for row in sorted(payload.get("rows", []), key=order):
        shown = {key: row.get(key) for key in TRANSFORMER_COLUMNS}
        shown["accuracy_mean"] = _mean_std(row)
        if not shown["adapter_ranks"]:
            shown["adapter_ranks"] = ""
        out.append(shown)
    if all(row["step_vs_lora8"] is None for row in out):  # runs before step times
        for row in out:
            del row["step_vs_lora8"]
    return out


def _transformer_summary(payload: dict) -> list[str]:
    rows = _by(payload["rows"], "variant")
    lora = rows["lora-r8"]
    budgeted = sorted(
        (r for name, r in rows.items() if name.startswith("tucker-budget")),
        key=lambda r: r["adapter_parameters"],
    )
    seeds = lora["seeds"]
    runs = "one seed" if seeds == 1 else f"{seeds} seeds"

    def at(row: dict) -> str:
        return (
            f"``{row['variant']}`` ({_mean_std(row)}% with "
            f"{100 * row['adapters_vs_lora8']:.0f}% of LoRA r=8's adapter parameters)"
        )

    small = [r for r in budgeted if r["adapters_vs_lora8"] <= 0.5]
    goal = "LoRA r=8's accuracy with at most 50% of its adapter parameters"
    reference = f"LoRA r=8's {_mean_std(lora)}% ({runs})"
    if not small:
        best = max(budgeted, key=lambda r: r["accuracy_mean"])
        claim = (
            f"**Claim.** The goal, {goal}, is not measured here (no Tucker variant at "
            f"50% or less); the budgeted Tucker adapters {at(best)} against "
            f"{reference}."
        )
    else:
        best = max(small, key=lambda r: r["accuracy_mean"])
        gap = lora["accuracy_mean"] - best["accuracy_mean"]
        if gap <= 0:
            claim = f"**Claim.** Goal reached: {at(best)} against {reference}."
        else:
            claim = (
                f"**Claim.** Goal not reached: the best Tucker variant at 50% or less, "
                f"{at(best)}, stays {gap:.2f} points below {reference}"
            )
            if seeds > 1 and best.get("accuracy_std") is not None:
                spread = math.hypot(best["accuracy_std"], lora["accuracy_std"])
                within = "within" if gap <= spread else "beyond"
                claim += (
                    f", {within} the spread of the seeds (the two standard deviations "
                    f"combined: {spread:.2f} points)"
                )
            claim += "."
    out = [claim]
    same_size = {25: "lora-r2", 50: "lora-r4", 100: "lora-r8"}
    pairs = [
        (r, rows[same_size[p]])
        for r in budgeted
        if (p := int(r["variant"][len("tucker-budget") :])) in same_size
        and same_size[p] in rows
    ]
    if pairs:
        out.append(
            "**At LoRA's sizes:** "
            + "; ".join(
                f"``{t['variant']}`` {_mean_std(t)}% against ``{r['variant']}`` "
                f"{_mean_std(r)}%"
                for t, r in pairs
            )
            + "."
        )
    lose = [
        f"``{t['variant']}`` trails ``{r['variant']}`` by "
        f"{r['accuracy_mean'] - t['accuracy_mean']:.2f} points."
        for t, r in pairs
        if t["accuracy_mean"] < r["accuracy_mean"]
    ]
    tuckers = [r for name, r in rows.items() if name.startswith("tucker")]
    if any(r.get("step_vs_lora8") for r in tuckers):
        slow = [r for r in tuckers if (r.get("step_vs_lora8") or 0) > 1]
        if slow:
            lose.append(
                "A training step costs "
                + ", ".join(
                    f"{r['step_vs_lora8']:.2f}{TIMES} (``{r['variant']}``)"
                    for r in slow
                )
                + " LoRA r=8's on this CPU."
            )
    else:  # runs before step times were recorded: whole training times
        slow = [r for r in tuckers if r["seconds"] > lora["seconds"]]
        if slow:
            lose.append(
                "Training took "
                + ", ".join(
                    f"{r['seconds'] / lora['seconds']:.1f}{TIMES} (``{r['variant']}``)"
                    for r in slow
                )
                + " LoRA r=8's time on this CPU."
            )
    test = payload["test_size"]
    lose.append(
        f"{runs.capitalize()}, {payload['epochs']} epoch(s) at {payload['tokens']} "
        f"tokens: one of the {test:,} test articles is {100 / test:.2f} points."
    )
    out.append("**Where we lose.** " + " ".join(lose))
    return out


# conv adapters ----------------------------------------------------------------------

CONV_ADAPTER_COLUMNS = (
    "variant",
    "lr",
    "accuracy",
    "accuracy_mean",
    "trainable_parameters",
    "adapter_parameters",
    "adapter_ranks",
    "median_step_ms",
    "step_vs_lora",
)
CONV_ADAPTER_MODELS = {"ccexam": "the ccexam MNIST CNN", "mobilenet_v2": "MobileNetV2"}


def _conv_adapter_rows(payload: dict) -> list[dict]:
    """The shown columns only (budget, seconds and the sweep's runs stay in the
    JSON); a sweep's rows show the mean ± std over the seeds at the best lr."""
    out = []
    for row in payload.get("rows", []):
        shown = {key: row[key] for key in CONV_ADAPTER_COLUMNS if key in row}
        if "accuracy_mean" in row:
            shown["accuracy_mean"] = _pm(row, "accuracy")
        if not shown.get("adapter_ranks"):
            shown["adapter_ranks"] = ""
        out.append(shown)
    return out


def _conv_adapter_sweep(payload: dict) -> tuple[str, list[str]]:
    """The sweep's sentence (validation accuracy per lr of every variant, seed 0)
    and the variants whose best lr is at an end of their grid."""
    grids, seeds = payload["grids"], payload["seeds"]
    parts, edges = [], []
    for row in payload["rows"]:
        grid = grids[row["variant"].split("-")[0]]
        runs = {
            r["lr"]: r
            for r in payload["runs"]
            if r["variant"] == row["variant"] and r["seed"] == seeds[0]
        }
        cells = [
            f"**{_pct(runs[lr]['validation_accuracy'])}**"
            if lr == row["lr"]
            else _pct(runs[lr]["validation_accuracy"])
            for lr in grid
            if lr in runs
        ]
        parts.append(f"``{row['variant']}`` {' / '.join(cells)}")
        if row["lr"] in (grid[0], grid[-1]) and len(grid) > 1:
            edges.append(f"``{row['variant']}`` ({row['lr']:g})")
    families: dict[tuple, list[str]] = {}
    for name, grid in grids.items():
        families.setdefault(tuple(grid), []).append(name)
    grid_text = "; ".join(
        f"{', '.join(names)}: {', '.join(f'{lr:g}' for lr in grid)}"
        for grid, names in families.items()
    )
    sentence = (
        f"**Learning rates.** Each variant swept lr over its family's grid "
        f"({grid_text}) with seed {seeds[0]}, "
        f"selected on {payload['validation_size']:,} held-out training images, "
        f"then {len(seeds)} seeds at the best lr. Validation accuracy % per lr, the "
        f"chosen one in bold: " + "; ".join(parts) + "."
    )
    return sentence, edges


def _conv_adapter_summary(payload: dict) -> list[str]:
    rows = _by(payload["rows"], "variant")
    lora, budget, tol = rows["lora-r4"], rows["tucker-budget"], rows["tucker-tol"]
    lora8, head, full = rows["lora-r8"], rows["head"], rows["full"]
    model = CONV_ADAPTER_MODELS[payload.get("model", "ccexam")]
    sweep = "accuracy_mean" in lora

    def value(row: dict) -> float:
        return row["accuracy_mean"] if sweep else 100 * row["accuracy"]

    def acc(row: dict) -> str:
        if sweep:
            return f"{_pm(row, 'accuracy')}%"
        return f"{value(row):.2f}%"

    def params(row: dict) -> str:
        return f"{row['trainable_parameters']:,}"

    at = " at its best lr" if sweep else ""
    out = [
        f"**Claim.** On {model}, at LoRA r=4's adapter size, the budgeted Tucker "
        f"conv adapters reach {acc(budget)} test accuracy{at} with {params(budget)} "
        f"trainable parameters, against LoRA r=4's {acc(lora)} with {params(lora)}; "
        f"at the tolerance, {acc(tol)} with {params(tol)} against LoRA r=8's "
        f"{acc(lora8)} with {params(lora8)}. The head alone reaches {acc(head)}, full "
        f"fine-tuning {acc(full)} with {params(full)}."
    ]
    lose = []
    edges: list[str] = []
    if sweep:
        sentence, edges = _conv_adapter_sweep(payload)
        out.append(sentence)
    behind = [
        f"``{ours['variant']}`` trails ``{ref['variant']}`` by "
        f"{value(ref) - value(ours):.2f} points"
        for ours, ref in ((budget, lora), (tol, lora8))
        if value(ours) < value(ref)
    ]
    if behind:
        lose.append("; ".join(behind) + ".")
    slow = [
        f"``{row['variant']}`` {row['step_vs_lora']:.2f}{TIMES}"
        for row in (budget, tol)
        if row["step_vs_lora"] > 1
    ]
    if slow:
        lose.append(
            "A training step costs " + ", ".join(slow) + " LoRA r=4's on this CPU."
        )
    if edges:
        lose.append(
            "The best lr is at an end of the grid for "
            + ", ".join(edges)
            + ": a wider grid may do better."
        )
    subsample = " (a subsample)" if payload.get("train_subsampled") else ""
    seeds = f"{len(payload['seeds'])} seeds" if sweep else "One seed"
    lose.append(
        f"{seeds} and one epoch on {payload['train_size']:,} training "
        f"images{subsample}: one of the {payload['test_size']:,} test images is "
        f"{100 / payload['test_size']:.2f} points."
    )
    out.append("**Where we lose.** " + " ".join(lose))
    return out


def _conv_adapter_head_apart_summary(payload: dict) -> list[str]:
    """LoRA r=4 and the budgeted Tucker adapters, the head at its own rate."""
    rows = _by(payload["rows"], "variant")
    lora, budget = rows["lora-r4"], rows["tucker-budget"]
    gap = lora["accuracy_mean"] - budget["accuracy_mean"]
    spread = math.hypot(lora["accuracy_std"], budget["accuracy_std"])
    if gap > 0:
        verdict = (
            f"trail LoRA r=4 by {gap:.2f} points, "
            + ("within" if gap <= spread else "beyond")
            + f" the seeds' spread (both standard deviations combined: {spread:.2f})"
        )
    else:
        verdict = f"match or beat LoRA r=4 (by {-gap:.2f} points)"
    out = [
        f"**Claim.** With the fresh head in its own parameter group at lr "
        f"{payload['head_lr']:g} (the head-only sweep's best), the budgeted Tucker "
        f"adapters reach {_pm(budget, 'accuracy')}% at adapter lr "
        f"{budget['lr']:g} with {budget['trainable_parameters']:,} trainable "
        f"parameters, against LoRA r=4's {_pm(lora, 'accuracy')}% at {lora['lr']:g} "
        f"with {lora['trainable_parameters']:,}: the Tucker adapters {verdict}."
    ]
    sentence, edges = _conv_adapter_sweep(payload)
    out.append(sentence)
    if edges:
        out.append(
            "**Where we lose.** The best lr is at an end of the grid for "
            + ", ".join(edges)
            + ": a wider grid may do better."
        )
    return out


# conv adapters diagnosis ------------------------------------------------------------

DIAGNOSIS_COLUMNS = (
    "variant",
    "lr",
    "accuracy",
    "update_norm",
    "update_sigma",
    "adapter_ranks",
)
#: One step each away from LoRA r=4 towards TDLRT: (from, to, what changes).
DIAGNOSIS_STEPS = (
    ("lora", "lora-adam-scale1", "LoRA's scaling 2 and weight decay removed"),
    ("lora-adam-scale1", "tucker-vanilla", "the Tucker form, Adam on its factors"),
    ("tucker-vanilla", "tucker-fixed", "TDLRT-Adam, one lr for adapter and head"),
    ("tucker-fixed", "tucker-adaptive", "the budget's rank adaptivity"),
    ("tucker-fixed", "tucker-fixed-head-adam", "the head's lr apart"),
    ("tucker-fixed", "tucker-fixed-sgd-head-adam", "momentum for Adam, head apart"),
)


def _diagnosis_rows(payload: dict) -> list[dict]:
    """Each variant at its best lr: test accuracy and the learned update's norm and
    four largest singular values."""
    out = []
    for row in payload["rows"]:
        sigma = row.get("update_sigma") or []
        out.append(
            {
                "variant": row["variant"],
                "lr": row["lr"],
                "accuracy": row["accuracy"],
                "update_norm": row["update_norm"],
                "update_sigma": " / ".join(_num(x) for x in sigma[:4]),
                "adapter_ranks": row.get("adapter_ranks") or "",
            }
        )
    return out


def _diagnosis_summary(payload: dict) -> list[str]:
    rows = _by(payload["rows"], "variant")
    runs = payload["runs"]
    steps = math.ceil(payload["train_size"] / payload["batch"])

    def value(name: str) -> float:
        return 100 * rows[name]["validation_accuracy"]

    def acc(name: str) -> str:
        row = rows[name]
        return (
            f"``{name}`` {100 * row['accuracy']:.2f}% (validation {value(name):.2f}%, "
            f"lr {row['lr']:g})"
        )

    out = [
        f"**Claim.** With a rank-4 adapter on ``{payload['target']}`` alone, each "
        "variant at its best lr on the validation images, test accuracy: "
        + "; ".join(acc(name) for name in rows)
        + "."
    ]
    if {"lora", "tucker-fixed", "tucker-fixed-head-adam"} <= rows.keys():
        gap = value("lora") - value("tucker-fixed")
        back = value("tucker-fixed-head-adam") - value("tucker-fixed")
        out[0] += (
            f" Giving the head its own lr ({payload['head_lr']:g}, Adam) and the "
            f"TDLRT-Adam adapter a larger one recovers {back:.2f} of the {gap:.2f} "
            "validation points by which TDLRT-Adam at one shared lr trails LoRA r=4."
        )
    growth: dict[str, list[float]] = {}
    for r in runs:
        if r.get("update_sigma"):
            ratio = r["update_sigma"][0] / (r["lr"] * steps)
            growth.setdefault(r["variant"], []).append(ratio)
    tdlrt = [x for n in ("tucker-fixed", "tucker-adaptive") for x in growth.get(n, [])]
    factor = [x for n in ("lora", "tucker-vanilla") for x in growth.get(n, [])]
    at = {
        r["variant"]: r
        for r in runs
        if r["lr"] == 1e-2 and r.get("update_norm") is not None
    }
    if tdlrt and factor:
        norms = ", ".join(
            f"``{name}`` {_num(r['update_norm'])}" for name, r in at.items()
        )
        out.append(
            f"**Update size.** After the epoch ({steps} steps), σ₁ of ΔW over lr "
            f"{TIMES} steps is {min(tdlrt):.2f}-{max(tdlrt):.2f} in the "
            f"{len(tdlrt)} TDLRT-Adam runs of ``tucker-fixed`` and "
            f"``tucker-adaptive`` (each singular value grew by less than lr a "
            f"step, as when Adam moves each entry of a core that the truncation "
            f"keeps diagonal by about lr), "
            f"{min(factor):.1f}-{max(factor):.1f} in the {len(factor)} runs of Adam "
            f"on LoRA's or the Tucker factors. ‖ΔW‖_F at lr 0.01: {norms} (the "
            f"pretrained weight: ‖W0‖_F {_num(payload['pretrained_norm'])}). So "
            "TDLRT-Adam's adapter needs a larger lr than the head, which trains at "
            "the same lr in the study's protocol"
            + (
                f": the head alone reaches {value('head'):.2f}% validation at lr "
                f"{rows['head']['lr']:g} and "
                + ", ".join(
                    f"{100 * r['validation_accuracy']:.2f}% at {r['lr']:g}"
                    for r in runs
                    if r["variant"] == "head" and r["lr"] > rows["head"]["lr"]
                )
                if "head" in rows
                else ""
            )
            + "."
        )
    chain = [
        (what, value(after) - value(before))
        for before, after, what in DIAGNOSIS_STEPS
        if before in rows and after in rows
    ]
    if chain:
        out.append(
            "**Reading.** Change of the best validation accuracy: "
            + "; ".join(f"{what}: {change:+.2f} points" for what, change in chain)
            + "."
        )
    grids = payload["grids"]
    sweep = []
    for name in rows:
        mine = [r for r in runs if r["variant"] == name]
        cells = {r["lr"]: _pct(r["validation_accuracy"]) for r in mine}
        sweep.append(
            f"``{name}`` "
            + " / ".join(
                f"**{cells[lr]}**" if lr == rows[name]["lr"] else cells[lr]
                for lr in grids[name]
                if lr in cells
            )
        )
    out.append(
        "**Learning rates.** Validation accuracy % per lr of each variant's grid "
        "(the chosen one in bold): " + "; ".join(sweep) + "."
    )
    lose = []
    best = max((n for n in rows if n.startswith("tucker")), key=value, default=None)
    if best and "lora" in rows and value(best) < value("lora"):
        lose.append(
            f"The best Tucker variant, ``{best}``, still trails LoRA r=4 by "
            f"{value('lora') - value(best):.2f} validation points "
            f"({100 * (rows['lora']['accuracy'] - rows[best]['accuracy']):.2f} test "
            "points)."
        )
    edges = [
        f"``{name}`` ({row['lr']:g})"
        for name, row in rows.items()
        if len(grids[name]) > 1 and row["lr"] in (grids[name][0], grids[name][-1])
    ]
    if edges:
        lose.append("Best lr at an end of its grid: " + ", ".join(edges) + ".")
    lose.append(
        "The study itself (three adapted layers, one lr) is not re-run here with "
        "the head's lr apart."
    )
    lose.append(
        f"One seed and one epoch on {payload['train_size']:,} training images: one "
        f"of the {payload['validation_size']:,} validation images is "
        f"{100 / payload['validation_size']:.2f} points, and seed-to-seed spread is "
        "not measured here."
    )
    out.append("**Where we lose.** " + " ".join(lose))
    return out


# ill-conditioning ---------------------------------------------------------------------


def _ill_rows(payload: dict) -> list[dict]:
    """One row per method, one final-loss column per learning rate."""
    table: dict[str, dict] = {}
    for row in payload.get("rows", []):
        entry = table.setdefault(row["method"], {"method": row["method"]})
        if row["diverged"]:
            text = f"✗ peak {_num(row['max_loss'], 1)}"
        else:
            text = _num(row["final_loss"], 2) + ("" if row["monotone"] else " *")
        entry[f"lr {row['lr']:g}"] = text
    return list(table.values())


def _ill_summary(payload: dict) -> list[str]:
    rows = payload["rows"]
    lrs = sorted({r["lr"] for r in rows})
    tdlrt = [r for r in rows if r["method"].startswith("TDLRT")]
    out = []
    if all(not r["diverged"] and r["monotone"] for r in tdlrt):
        out.append(
            f"**Claim.** TDLRT, rank-adaptive and at fixed rank, decreased the loss "
            f"monotonically at every learning rate from {lrs[0]:g} to {lrs[-1]:g} "
            f"and ended at or below "
            f"{_num(max(r['final_loss'] for r in tdlrt), 2)} after {payload['steps']} "
            f"steps."
        )
    else:
        bad = [f"{r['method']} at lr {r['lr']:g}" for r in tdlrt if r["diverged"]]
        out.append(
            "**Claim does not hold in these results:** TDLRT diverged or was not "
            "monotone (" + ", ".join(bad) + ")."
        )
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        if method.startswith("TDLRT"):
            continue
        mine = [r for r in rows if r["method"] == method]
        diverged = [f"{r['lr']:g}" for r in mine if r["diverged"]]
        wobbly = [
            f"{r['lr']:g}" for r in mine if not r["monotone"] and not r["diverged"]
        ]
        if not diverged and not wobbly:
            parts.append(f"{method} was stable at every learning rate")
            continue
        text = f"{method} diverged at lr {', '.join(diverged) or 'none'}"
        if wobbly:
            text += f" and was not monotone at lr {', '.join(wobbly)}"
        if diverged:
            text += f" (peak loss {_num(max(r['max_loss'] for r in mine), 2)})"
        parts.append(text)
    text = "; ".join(parts)
    out.append("**Against the others.** " + text[:1].upper() + text[1:] + ".")
    stable = [
        r["method"]
        for r in rows
        if not r["method"].startswith("TDLRT")
        and all(
            not s["diverged"] and s["monotone"]
            for s in rows
            if s["method"] == r["method"]
        )
    ]
    if stable:
        out.append(
            f"**Where we lose.** {' and '.join(dict.fromkeys(stable))} did as well as "
            f"TDLRT on this problem: the advantage is over factor SGD and the explicit "
            f"factor step, not over every Riemannian method."
        )
    return out


# timing studies ----------------------------------------------------------------------


def _basis_update_every_summary(payload: dict) -> list[str]:
    rows = _by(payload["rows"], "k")
    every, slowest = rows[1], max(rows.values(), key=lambda r: r["k"])
    settings = payload["settings"]
    worst = min(rows.values(), key=lambda r: r["test_accuracy"])
    return [
        f"**Claim.** After {settings['steps']} steps, ``basis_update_every="
        f"{slowest['k']}`` needs {slowest['update_ms'] / every['update_ms']:.2f} "
        f"{TIMES} the update time of the per-step TDLRT "
        f"({slowest['step_ms'] / every['step_ms']:.2f} {TIMES} the whole step).",
        f"**Where we lose.** Test accuracy {_pct(every['test_accuracy'])}% with "
        f"k = 1, down to {_pct(worst['test_accuracy'])}% with k = {worst['k']} "
        f"(one seed); with k = {slowest['k']} the network ends with "
        f"{slowest['stored'] / every['stored']:.2f} {TIMES} the stored weights.",
    ]


def _basis_update_every_rows(payload: dict) -> list[dict]:
    keep = (
        "k",
        "update_ms",
        "augment_ms",
        "galerkin_ms",
        "truncate_ms",
        "step_ms",
        "test_accuracy",
        "stored",
    )
    return [{key: row.get(key) for key in keep} for row in payload["rows"]]


def _training_step_summary(payload: dict) -> list[str]:
    rows = payload["rows"]
    out = []
    lenet = _by([r for r in rows if r["case"] == "lenet"], "variant")
    tdlrt = lenet.get("TDLRT (dense)")
    vanilla = lenet.get("vanilla Tucker (dense)")
    if tdlrt and vanilla:
        out.append(
            f"**Claim.** On LeNet-5 ({payload.get('threads', '?')} CPU threads) a "
            f"TDLRT step with the dense forward costs {tdlrt['ratio_to_full']:.2f} "
            f"dense SGD steps ({tdlrt['ms']:.0f} ms, {tdlrt['update_ms']:.0f} ms of "
            f"it the update); vanilla factor SGD costs {vanilla['ratio_to_full']:.2f}."
        )
    conv = [r for r in rows if r["case"] == "conv" and "TDLRT" in r["variant"]]
    if conv:
        best = min(conv, key=lambda r: r["ratio_to_full"])
        out.append(
            f"On one large convolution the ``{best['variant']}`` step costs "
            f"{best['ratio_to_full']:.2f} of the dense ``Conv2d`` step."
        )
    slower = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        t = [r["ms"] for r in mine if "TDLRT" in r["variant"]]
        v = [r["ms"] for r in mine if "vanilla" in r["variant"]]
        if t and v:
            slower.append(f"{case}: {min(t) / min(v):.1f}x")
    if slower:
        out.append(
            "**Where we lose.** The fastest TDLRT step is slower than the fastest "
            "vanilla step in every set-up (" + ", ".join(slower) + ")."
        )
    return out


def _speed_summary(payload: dict) -> list[str]:
    rows = payload["rows"]
    device = payload.get("device", "cpu")
    where = payload.get("machine", {}).get("gpu") or f"{device.upper()}"
    tdlrt = [r for r in rows if r["variant"].startswith("TDLRT")]
    vanilla = [r for r in rows if r["variant"].startswith("vanilla")]
    top = max(r["compression"] for r in tdlrt)
    at_top = [r for r in tdlrt if r["compression"] >= top - 0.01]
    networks = ", ".join(dict.fromkeys(r["network"] for r in rows))
    shares = [r["qr_svd_truncation_fraction"] for r in tdlrt]
    out = [
        f"**Claim.** On the {where} at about {_pct(top, 0)}% compression a TDLRT step "
        f"({networks}, batch {payload.get('batch', '?')}) costs "
        f"{_range([r['ratio_to_full'] for r in at_top], lambda v: f'{v:.2f}')} dense "
        f"steps; QR, SVD and truncation take "
        f"{_range(shares, lambda v: _pct(v, 0))}% of it."
    ]
    fulls = {r["network"]: r for r in rows if r["variant"] == "full"}
    memory = [
        r["peak_memory_mib"] / fulls[r["network"]]["peak_memory_mib"]
        for r in tdlrt
        if r["network"] in fulls
    ]
    if memory:
        out.append(
            f"Peak memory of a TDLRT step: "
            f"{_range(memory, lambda v: f'{v:.2f}')} times the dense step's."
        )
    if len({r.get("level", round(r["compression"], 2)) for r in tdlrt}) > 1:
        lose = (
            f"**Where we lose.** Over all compression levels TDLRT costs "
            f"{_range([r['ratio_to_full'] for r in tdlrt], lambda v: f'{v:.2f}')} "
            f"dense steps"
        )
        if vanilla:
            lose += (
                f", vanilla factor SGD "
                f"{_range([r['ratio_to_full'] for r in vanilla], lambda v: f'{v:.2f}')}"
            )
        out.append(lose + ".")
    on_device = {r["network"]: r for r in tdlrt if "on the GPU" in r["variant"]}
    pairs = [
        (r["network"], r["median_ms"] / on_device[r["network"]]["median_ms"])
        for r in tdlrt
        if r["variant"] == "TDLRT factorized" and r["network"] in on_device
    ]
    if pairs:
        out.append(
            "**Where we lose.** The host factorizations do not pay everywhere: the "
            "factorized TDLRT step took "
            + ", ".join(f"{ratio:.2f} times as long ({net})" for net, ratio in pairs)
            + " as with the factorizations on the GPU."
        )
    return out


def _step_cost_summary(payload: dict) -> list[str]:
    rows = payload["rows"]
    ranks = sorted({r["rank"] for r in rows})
    low = [r["ratio"] for r in rows if r["rank"] == ranks[0]]
    high = [r for r in rows if r["rank"] == ranks[-1]]
    share = [r["truncation_ms"] / r["step_ms"] for r in high]
    return [
        f"**Claim.** At rank {ranks[0]} a TDLRT step costs "
        f"{_range(low, lambda v: f'{v:.1f}')} times one dense mode product of the "
        f"gradient (which any method must pay once), on every shape and backend.",
        f"**Where we lose.** The ratio grows with the rank: at rank {ranks[-1]} it is "
        f"{_range([r['ratio'] for r in high], lambda v: f'{v:.1f}')}, and the "
        f"truncation (SVDs of the augmented core) takes "
        f"{_range(share, lambda v: _pct(v, 0))}% of the step.",
    ]


BACKENDS = {"cupy": "CuPy", "pytorch": "PyTorch", "numpy": "NumPy"}
PHASES = ("contractions_ms", "augmentation_ms", "core step_ms", "truncation_ms")


def _step_cost_rows(payload: dict) -> list[dict]:
    """The four phase times in one column."""
    return [
        {**row, "phases": " / ".join(_num(row[k], 2) for k in PHASES if k in row)}
        for row in payload.get("rows", [])
    ]


def _small_factorization_summary(payload: dict) -> list[str]:
    rows = payload["rows"]
    svd = [r for r in rows if r["factorization"] == "svd"]
    qr = [r for r in rows if r["factorization"] == "qr"]
    host_wins = [r["shape"] for r in svd if r["host_over_backend"] < 1]
    out = []
    if host_wins:
        ratios = [r["host_over_backend"] for r in svd if r["shape"] in host_wins]
        out.append(
            f"**Claim.** For SVDs of {', '.join(host_wins)} matrices the host is "
            f"faster than {BACKENDS.get(payload.get('backend'), 'the backend')} on the "
            f"GPU "
            f"(host time {_range(ratios, lambda v: f'{v:.2f}')} of the GPU's); larger "
            f"SVDs belong on the GPU."
        )
    if qr:
        out.append(
            f"**Where we lose** by moving work to the host: QR is "
            f"{_range([r['host_over_backend'] for r in qr], lambda v: f'{v:.1f}')} "
            f"times slower there at these sizes, so only SVDs move."
        )
    return out


def _distributed_summary(payload: dict) -> list[str]:
    rows = sorted(payload["rows"], key=lambda r: r["workers"])
    one, many = rows[0], rows[-1]
    cores = payload.get("cpu_count") or payload.get("machine", {}).get("cpu_count")
    return [
        f"**Claim.** Data-parallel TDLRT trains correctly: {many['workers']} workers "
        f"end at {100 * many['test_accuracy']:.2f}% test accuracy, one process at "
        f"{100 * one['test_accuracy']:.2f}%, {_rank_gap(one['ranks'], many['ranks'])}.",
        f"**Where we lose.** On {cores} CPU cores the workers share the cores: "
        f"{many['images_per_second']:.0f} images/s against "
        f"{one['images_per_second']:.0f} (speed-up {many['speedup']:.2f}).",
    ]


def _rank_gap(a: dict, b: dict) -> str:
    gap = max((abs(x - y) for k in a if k in b for x, y in zip(a[k], b[k])), default=0)
    return "with the same ranks" if gap == 0 else f"with ranks within {gap} per mode"


def _peers_summary(payload: dict) -> list[str]:
    rows = payload["rows"]
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    wins, losses = [], []
    for problem in problems:
        reached = [r for r in rows if r["problem"] == problem and r["seconds"]]
        ours = [r for r in reached if r["library"] == "tuckerflow"]
        peers = [r for r in reached if r["library"] != "tuckerflow"]
        if ours and peers:
            best, peer = (min(g, key=lambda r: r["seconds"]) for g in (ours, peers))
            wins.append(
                f"{problem}: {best['method']} {best['seconds']:.2f} s against "
                f"{peer['library']} {peer['method']} {peer['seconds']:.2f} s"
            )
        missed = [
            r["method"]
            for r in rows
            if r["problem"] == problem
            and r["library"] == "tuckerflow"
            and not r["seconds"]
        ]
        if missed:
            losses.append(f"{problem}: {'; '.join(missed)}")
    out = [
        "**Claim.** Time to the held-out target with default settings, no step-size "
        "sweep (best of each side): " + "; ".join(wins) + "."
    ]
    adaptive = []
    for problem in problems:
        reached = [r for r in rows if r["problem"] == problem and r["seconds"]]
        grown = [r for r in reached if "from rank 1" in r["method"]]
        peers = [r for r in reached if r["library"] != "tuckerflow"]
        if grown and peers:
            best, peer = (min(g, key=lambda r: r["seconds"]) for g in (grown, peers))
            adaptive.append(
                f"{problem}: {best['seconds']:.2f} s against {peer['seconds']:.2f} s"
            )
    if adaptive:
        out.append(
            "Rank-adaptive from rank 1, against the fastest peer given the true "
            "rank: " + "; ".join(adaptive) + "."
        )
    if losses:
        out.append(
            "**Where we lose.** Runs that never reached the target within "
            f"{payload.get('cap_seconds', 0):.0f} s: " + "; ".join(losses) + "."
        )
    return out


def _update_rows(payload: dict) -> list[dict]:
    keys = (
        "network",
        "batch",
        "dense_ms",
        "vanilla_ms",
        "tdlrt_factorized_ms",
        "tdlrt_dense_ms",
        "tdlrt_vs_vanilla",
        "tdlrt_vs_dense",
    )
    return [{k: row[k] for k in keys} for row in payload["ratios"]]


def _update_summary(payload: dict) -> list[str]:
    targets = payload["targets"]
    ratios = payload["ratios"]
    cases = [f"{r['network']} (batch {r['batch']})" for r in ratios]
    out = [
        "**Claim.** A TDLRT training step (the faster of its two forwards) costs "
        + ", ".join(
            f"{r['tdlrt_vs_vanilla']:.2f} vanilla factor-SGD steps on {c}"
            for r, c in zip(ratios, cases)
        )
        + f" (target {targets['tdlrt_vs_vanilla']})."
    ]
    resnet = [r for r in ratios if r["network"].startswith("resnet")]
    if resnet:
        out.append(
            "Against the dense network with SGD on ResNet-20: "
            + ", ".join(
                f"{r['tdlrt_vs_dense']:.2f} at batch {r['batch']}" for r in resnet
            )
            + f" (target {targets['tdlrt_vs_dense']})."
        )
    adapters = payload.get("adapters")
    if adapters:
        out.append(
            f"MiniLM adapters at LoRA's rank 8: a TDLRT step costs "
            f"{adapters['tdlrt_vs_lora']:.2f} PEFT LoRA steps "
            f"(target {targets['tdlrt_vs_lora']})."
        )
    missed = [
        f"{c}: {r['tdlrt_vs_vanilla']:.2f}"
        for r, c in zip(ratios, cases)
        if r["tdlrt_vs_vanilla"] > targets["tdlrt_vs_vanilla"]
    ]
    if missed:
        out.append(
            "**Where we lose.** Above the vanilla target on " + "; ".join(missed) + "."
        )
    return out


COMPRESSION_COLUMNS = (
    "variant",
    "runs",
    "accuracy_mean",
    "converged_accuracy_mean",
    "weights_mean",
    "compressed",
    "median_step_ms",
)
SPEED_COLUMNS = (
    "network",
    "compression",
    "variant",
    "rank",
    "median_ms",
    "ratio_to_full",
    "peak_memory_mib",
    "qr_svd_truncation_fraction",
)

STUDIES: dict[str, Study] = {
    "lenet_compression": Study(
        "LeNet-5 on MNIST, trained from scratch",
        "How much of LeNet-5 can TDLRT remove while training from a random start, "
        "and how do factor-SGD baselines do at the same ranks?",
        "benchmarks/lenet_compression.py",
        _compression_summary,
        _compression_rows,
        "Final test accuracy (mean and standard deviation over seeds) against the "
        "number of stored weights; diverged runs are left out of the points.",
        COMPRESSION_COLUMNS,
    ),
    "fashion_compression": Study(
        "A small VGG on Fashion-MNIST, trained from scratch",
        "The same question on a harder data set and a network with batch norm.",
        "benchmarks/fashion_compression.py",
        _compression_summary,
        _compression_rows,
        "Final test accuracy against stored weights, as for LeNet-5.",
        COMPRESSION_COLUMNS,
    ),
    "resnet_baselines": Study(
        "ResNet-20 on Fashion-MNIST against every baseline family",
        "A residual network trained from scratch with about a tenth of its weights: "
        "TDLRT under a global budget and by tolerance, against factor SGD and "
        "Riemannian gradient descent at the same Tucker ranks, TensorLy-Torch's "
        "Tucker, CP and tensor-train convolutions, low-rank matrices, gradual "
        "global magnitude pruning and SNIP, all at the same number of stored "
        "weights.",
        "benchmarks/resnet_baselines.py",
        _baselines_summary,
        _compression_rows,
        "Final test accuracy against stored weights (pruned layers: their "
        "unmasked weights).",
        COMPRESSION_COLUMNS,
    ),
    "pretrained_compression": Study(
        "Compressing a pretrained CNN",
        "A pretrained MNIST classifier is tuckerized by truncated HOSVD at several "
        "tolerances, or under a global parameter budget, then fine-tuned for one "
        "epoch by TDLRT or by plain SGD on the factors; under a budget each method's "
        "learning rate is swept (TDLRT's lr is the dense network's step size, "
        "vanilla's is amplified by the squared singular values of the core: see the "
        "how-to on choosing the learning rate).",
        "benchmarks/pretrained_compression.py",
        _pretrained_summary,
        _pretrained_rows,
        legend="Tolerance rows: one run each. Budget rows (the share of the "
        "tuckerized weights kept): mean ± standard deviation over the seeds at each "
        "method's best learning rate of the sweep in the summary; ``TDLRT lr·σ²`` "
        "gives every Tucker layer the vanilla-equivalent learning rate.",
    ),
    "transformer_adapters": Study(
        "Tucker adapters on a transformer",
        "Parameter-efficient fine-tuning of MiniLM-L6 on BBC News topics: "
        "rank-adaptive Tucker adapters under global parameter budgets against PEFT "
        "LoRA at several ranks, on a curve of accuracy against adapter size.",
        "benchmarks/transformer_adapters.py",
        _transformer_summary,
        _transformer_rows,
        "Test accuracy (mean and standard deviation over the seeds) against adapter "
        "parameters (log scale): PEFT LoRA at several ranks against Tucker adapters "
        "under global parameter budgets, shares of the reference LoRA's adapter "
        "parameters (named in the summary).",
        TRANSFORMER_COLUMNS,
        "Adapter parameters: mean over the seeds, Tucker after training (the ranks "
        "adapt); trainable parameters add the head; the step is the median wall time "
        "of a training step; adapter ranks of the first seed.",
    ),
    "conv_adapters": Study(
        "Conv adapters on a pretrained CNN",
        "The pretrained ccexam MNIST CNN transferred to Fashion-MNIST with a fresh "
        "head: Tucker conv adapters, which keep the kernel's tensor structure and "
        "adapt their ranks under TDLRT (by tolerance or under a parameter budget "
        "equal to LoRA's), against PEFT LoRA on the flattened convs, training the "
        "head alone, and full fine-tuning.",
        "benchmarks/conv_adapters.py",
        _conv_adapter_summary,
        _conv_adapter_rows,
        "Test accuracy against trainable parameters (adapters and head, log "
        "scale): the Pareto view of the variants.",
        CONV_ADAPTER_COLUMNS,
        "Trainable parameters count the adapters (Tucker: at their ranks after "
        "training) and the head; the step is the median wall time of a training "
        "step on this CPU.",
    ),
    "conv_adapters_diagnosis": Study(
        "Conv adapters: why TDLRT trails LoRA",
        "The gap of the ccexam study, taken apart: the adapters on the big hidden "
        "Linear only, where LoRA and the Tucker adapter are nearly the same "
        "low-rank update, trained one optimizer change at a time from PEFT LoRA "
        "with AdamW to TDLRT with Adam; each variant's learning rate swept and "
        "chosen on held-out images.",
        "benchmarks/conv_adapters_diagnosis.py",
        _diagnosis_summary,
        _diagnosis_rows,
        columns=DIAGNOSIS_COLUMNS,
        legend="Each variant at its best learning rate (validation); the update is "
        "the learned change of the adapted weight after the epoch, its Frobenius "
        "norm and its largest singular values; the sweep is in the JSON.",
    ),
    "conv_adapters_head_apart": Study(
        "Conv adapters, the head at its own rate",
        "The ccexam comparison of LoRA and the budgeted Tucker adapters at equal size "
        "again, "
        "with the fresh head trained in its own parameter group at the head-only "
        "sweep's best rate and only the adapters' rate swept: the change the "
        "diagnosis below points to (TDLRT-Adam's adapters want a larger rate than "
        "a head sharing it tolerates).",
        "benchmarks/conv_adapters.py --sweep --head-lr 3e-3 --variants lora-r4 "
        "tucker-budget",
        _conv_adapter_head_apart_summary,
        _conv_adapter_rows,
        "Test accuracy against trainable parameters (adapters and head, log scale).",
        CONV_ADAPTER_COLUMNS,
    ),
    "conv_adapters_mobilenet_v2": Study(
        "Conv adapters on MobileNetV2",
        "The same comparison on torchvision's ImageNet MobileNetV2, Fashion-MNIST "
        "resized and repeated to RGB, the adapters on every conv but the depthwise "
        "ones (PEFT cannot put LoRA on those): a deeper network with batch norm, "
        "on a training subset sized for this CPU.",
        "benchmarks/conv_adapters.py --model mobilenet_v2",
        _conv_adapter_summary,
        _conv_adapter_rows,
        "Test accuracy against trainable parameters (adapters and head, log scale).",
        CONV_ADAPTER_COLUMNS,
        "As for the ccexam network; adapter ranks are summarised over the adapted "
        "convs (range of the output-channel rank, median).",
    ),
    "ill_conditioning": Study(
        "Ill-conditioned cores",
        "Least squares from a start whose core singular values span many orders of "
        "magnitude, the situation in which training the factors is ill-conditioned "
        "(the paper's Figure 2).",
        "benchmarks/ill_conditioning.py",
        _ill_summary,
        _ill_rows,
        "Loss per step for every method, one panel per learning rate.",
        legend="Final loss after the last step. ✗: diverged (the loss became "
        "non-finite or grew far above its start; its peak is shown). \\*: finite but "
        "not monotone.",
    ),
    "basis_update_every": Study(
        "Basis update every k steps",
        "TDLRT with the bases augmented every k steps, Galerkin steps of the core "
        "in between and a truncation every k-th step (``basis_update_every=k``), on "
        "LeNet-5 and Fashion-MNIST: what the cheaper steps cost in accuracy.",
        "benchmarks/basis_update_every.py",
        _basis_update_every_summary,
        _basis_update_every_rows,
        legend="Update times are means over the steps of each kind (the k values "
        "trained side by side on the same batches); stored weights after the last "
        "step, a truncation for every k.",
    ),
    "training_step": Study(
        "Time of one training step",
        "Forward, backward and update, dense against Tucker training, on LeNet-5 and "
        "on one large convolution.",
        "benchmarks/training_step.py",
        _training_step_summary,
    ),
    "speed_memory": Study(
        "Time and memory of a training step on a CPU",
        "LeNet-5 and a small VGG at three compression levels, every variant in "
        "its own process.",
        "benchmarks/speed_memory.py",
        _speed_summary,
        columns=SPEED_COLUMNS,
    ),
    "speed_memory_cuda": Study(
        "Time and memory of a training step on a GPU",
        "The same study on a GPU, where the small factorizations of a step are bound "
        "by latency.",
        "benchmarks/speed_memory.py --device cuda",
        _speed_summary,
        columns=SPEED_COLUMNS,
    ),
    "speed_memory_cuda_host": Study(
        "GPU training step with the factorizations on the host",
        "The GPU study at the highest compression, with the small QR/SVD "
        "factorizations run by NumPy on the host.",
        "benchmarks/speed_memory.py --device cuda",
        _speed_summary,
        columns=SPEED_COLUMNS,
    ),
    "step_cost": Study(
        "Cost of one TDLRT step, by phase",
        "The step alone (no network), relative to one dense mode product of the "
        "gradient.",
        "benchmarks/step_cost.py",
        _step_cost_summary,
        _step_cost_rows,
        columns=("backend", "shape", "rank", "step_ms", "ratio", "phases"),
    ),
    "small_factorizations_cupy_cuda": Study(
        "Small factorizations on a GPU: device or host",
        "Where the small QR and SVD factorizations of a step should run when the "
        "tensors live on a GPU.",
        "benchmarks/small_factorizations.py --backend cupy --device cuda",
        _small_factorization_summary,
    ),
    "peers": Study(
        "Against peer libraries on tensor and matrix completion",
        "Time to a held-out error target on completion problems, against "
        "tucker-riemopt (Tucker) and pymanopt (matrices), each used as its authors "
        "recommend; our runs use line searches or fixed steps from the problem, "
        "never a sweep.",
        "benchmarks/peers.py",
        _peers_summary,
        rows=lambda payload: [
            {
                "problem": r["problem"],
                "library": r["library"],
                "method": r["method"],
                "seconds": r["seconds"] if r["seconds"] else "not reached",
                "evaluations": r["evaluations"],
            }
            for r in payload["rows"]
        ],
    ),
    "update_cost": Study(
        "Cost of the TDLRT update against vanilla and dense training",
        "One whole training step at high compression with every rank pinned: "
        "the dense network, vanilla SGD on the Tucker factors, and TDLRT, timed in "
        "interleaved rounds in one process.",
        "benchmarks/update_cost.py",
        _update_summary,
        _update_rows,
        "Update time per layer against the number of identical layers, one layer "
        "at a time and through the multi-tensor path.",
    ),
    "distributed_lenet": Study(
        "Data-parallel training",
        "LeNet-5 under ``torchrun`` with the gradient averaging of "
        ":func:`tuckerflow.nn.prepare_ddp`, against one process.",
        "benchmarks/distributed_lenet.py",
        _distributed_summary,
    ),
}


# --------------------------------------------------------------------------- tables


def table_columns(
    rows: Sequence[dict], first: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """Shown columns, and the columns with one value in every row (stated once)."""
    columns: list[str] = [k for k in first if any(k in row for row in rows)]
    for row in rows:
        columns += [k for k in row if k not in columns and k not in DROP]
    constant = {}
    if len(rows) > 1:
        for key in columns[1:]:
            cells = {_cell(key, row.get(key)) for row in rows}
            if len(cells) == 1:
                constant[key] = cells.pop()
    return [c for c in columns if c not in constant], constant


def header(key: str) -> str:
    if key in HEADERS:
        return HEADERS[key]
    return key.replace("_", " ")


def table(
    rows: Sequence[dict], first: Sequence[str] = ()
) -> tuple[list[str], list[list[str]], dict[str, str]]:
    """Headers, cells and the constant columns of a study's table."""
    columns, constant = table_columns(rows, first)
    cells = [[_cell(c, row.get(c)) for c in columns] for row in rows]
    return [header(c) for c in columns], cells, constant


def table_width(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> int:
    """Characters a row needs: per column the longest cell or longest header word."""
    width = 0
    for index, head in enumerate(headers):
        longest_word = max((len(w) for w in head.split()), default=0)
        longest_cell = max((len(row[index]) for row in cells), default=0)
        width += max(longest_word, longest_cell) + 3  # padding
    return width


def _list_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :class: benchmark-table",
        "   :widths: auto",
        "",
    ]
    for row in [list(headers), *cells]:
        lines.append("   * - " + (row[0] or " "))
        lines += [f"     - {cell or ' '}" for cell in row[1:]]
    lines.append("")
    return lines


def _machine(payload: dict) -> str:
    machine = payload.get("machine", {})
    facts = []
    if machine.get("date"):
        facts.append(str(machine["date"])[:10])
    if machine.get("commit"):
        facts.append(f"commit {machine['commit']}")
    if machine.get("gpu"):
        facts.append(str(machine["gpu"]))
    if machine.get("cpu_count"):
        facts.append(f"{machine['cpu_count']} CPU cores")
    facts += [
        f"{name} {machine[key]}"
        for key, name in (
            ("python", "Python"),
            ("torch", "PyTorch"),
            ("numpy", "NumPy"),
            ("tensorly", "TensorLy"),
            ("cupy", "CuPy"),
        )
        if machine.get(key)
    ]
    return "Measured " + ", ".join(facts) + "." if facts else ""


def _protocol(payload: dict) -> str:
    text = " ".join(str(payload.get("protocol", "")).split())
    # a protocol cut before its list of variants ends in "...:"; drop that sentence
    if text.endswith(":"):
        text = re.sub(r"[^.]*:$", "", text).strip()
    return text


def anchor(stem: str) -> str:
    return "bench-" + stem.replace("_", "-")


def render(
    stem: str, payload: dict, image: pathlib.PurePath | None = None
) -> tuple[str, list[str]]:
    """reStructuredText of one study, and the problems met (e.g. a stale summary)."""
    study = STUDIES.get(stem) or Study(stem.replace("_", " "), "", f"benchmarks/{stem}")
    problems: list[str] = []
    lines = [f".. _{anchor(stem)}:", "", study.title, "-" * len(study.title), ""]
    if study.framing:
        lines += [study.framing, ""]
    summary: list[str] = []
    if study.summary is not None:
        try:
            summary = study.summary(payload)
        except (KeyError, StopIteration, ValueError, TypeError, IndexError) as error:
            problems.append(
                f"{stem}: the summary no longer matches the result file "
                f"({type(error).__name__}: {error}); update docs/generate_benchmarks.py"
            )
    for sentence in summary:
        lines += [f"* {sentence}"]
    if summary:
        lines.append("")
    if payload.get("note"):
        lines += [str(payload["note"]), ""]
    if image is not None:
        lines += [
            f".. figure:: {image.as_posix()}",
            "   :width: 100%",
            f"   :alt: plot of {stem}",
            "",
        ]
        if study.caption:
            lines += [f"   {study.caption}", ""]
    rows = study.rows(payload) if study.rows else list(payload.get("rows") or [])
    if rows:
        headers, cells, constant = table(rows, study.columns)
        lines += _list_table(headers, cells)
        if study.legend:
            lines += [study.legend, ""]
        if constant:
            lines += [
                "In every row: "
                + "; ".join(f"{header(k)} {v}" for k, v in constant.items())
                + ".",
                "",
            ]
    protocol = _protocol(payload)
    facts = " ".join(
        part
        for part in (
            protocol,
            f"Script: ``{study.script}``.",
            _machine(payload),
            f"Data: ``benchmarks/results/{stem}.json``.",
        )
        if part
    )
    lines += [".. rst-class:: benchmark-facts", "", facts, ""]
    return "\n".join(lines), problems


def _order(path: pathlib.Path) -> tuple[int, str]:
    names = list(STUDIES)
    return (names.index(path.stem) if path.stem in names else len(names), path.stem)


def result_files(results: pathlib.Path = RESULTS) -> list[pathlib.Path]:
    return sorted(
        (p for p in results.glob("*.json") if not p.stem.endswith("_quick")), key=_order
    )


def generate(
    results: pathlib.Path = RESULTS, image_dir: str | None = None
) -> tuple[str, list[str]]:
    """The page's generated part and the problems met.

    ``image_dir``: how the page refers to ``results`` (default: relative to docs/).
    """
    if image_dir is None:  # relative to docs/, where benchmarks.rst includes the text
        image_dir = os.path.relpath(results, DOCS)
    files = result_files(results)
    if not files:
        return "No benchmark results are committed yet.\n", []
    overview = ["At a glance", "-----------", ""]
    parts, problems = [], []
    for path in files:
        payload = json.loads(path.read_text())
        png = path.with_suffix(".png")
        image = pathlib.PurePosixPath(image_dir, png.name) if png.exists() else None
        text, found = render(path.stem, payload, image)
        parts.append(text)
        problems += found
        study = STUDIES.get(path.stem)
        first = None
        if study is not None and study.summary is not None and not found:
            first = study.summary(payload)[0].replace("**Claim.** ", "")
        link = f"* :ref:`{anchor(path.stem)}`"
        overview.append(link + (f": {first}" if first else ""))
    overview.append("")
    return "\n".join(overview + parts), problems


def write(target: pathlib.Path, results: pathlib.Path = RESULTS) -> list[str]:
    """Write the generated part of the page; return the problems met."""
    text, problems = generate(results)
    target.write_text(text)
    return problems


if __name__ == "__main__":
    out = pathlib.Path(__file__).resolve().parent / "benchmark_tables.inc"
    for problem in write(out):
        print("WARNING:", problem)
    print(out)
