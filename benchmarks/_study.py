"""Machinery of the compression-vs-accuracy studies: one process per (variant, seed),
per-run JSON files, aggregation over seeds, a table and a plot.

A study module describes its network, data and variants in a :class:`Study` and calls
:func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
from collections.abc import Callable

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


@dataclasses.dataclass
class Study:
    name: str  # results/<name>.json and results/<runs>/...
    script: pathlib.Path  # re-run for every (variant, seed)
    runs: str  # folder under results/ for the per-run files
    variants: list[str]
    seeds: tuple[int, ...]
    baselines: tuple[str, ...]  # variants that need the reference run first
    layers: dict[str, tuple[int, ...]]  # factorized layers and their weight shapes
    conv_layers: tuple[str, ...]
    build: Callable  # (variant, seed, runs folder) -> (model, optimizer)
    load_data: Callable
    protocol: str
    epochs: int = 10
    batch: int = 128
    quick_variants: tuple[str, ...] = ()
    # build also gets the run's optimizer steps (``steps=...``, for schedules that
    # must end within the run whatever ``--epochs`` and ``--limit`` are)
    build_takes_steps: bool = False
    cosine: bool = False  # per-step cosine decay of the learning rates (_train.train)

    @property
    def all_weights(self) -> int:
        return int(sum(np.prod(s) for s in self.layers.values()))

    @property
    def conv_weights(self) -> int:
        return int(sum(np.prod(self.layers[n]) for n in self.conv_layers))


def run_one(study: Study, variant: str, seed: int, epochs: int, limit, runs) -> None:
    import math

    import torch
    from _train import train

    torch.set_num_threads(1)
    data = study.load_data()
    extra = {}
    if study.build_takes_steps:
        images = min(len(data["train"][1]), limit or math.inf)
        extra["steps"] = epochs * math.ceil(images / study.batch)
    model, optimizer = study.build(variant, seed, runs, **extra)
    history = train(
        model,
        optimizer,
        data,
        epochs=epochs,
        batch=study.batch,
        seed=seed,
        limit=limit,
        cosine=study.cosine,
    )
    history.update({"variant": variant, "seed": seed, "epochs_run": epochs})
    history["layer_weights"] = layer_weight_counts(model, study.layers)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{variant}-seed{seed}.json").write_text(json.dumps(history))
    final = history["epochs"][-1]
    print(
        f"{variant} seed {seed}: accuracy {100 * final['test_accuracy']:.2f}%, "
        f"{final['weights']:,} weights "
        f"({1 - final['weights'] / study.all_weights:.2%} compression)",
        flush=True,
    )


def run_all(study: Study, args, variants, seeds, runs: pathlib.Path) -> None:
    """Every missing run, ``args.jobs`` processes at a time (one thread each).

    The data are loaded once first, so a missing data set stops the study here with
    its install command. A run that fails stops the study with a non-zero exit once
    the others have finished (finished runs are kept: a re-run skips them).
    """
    todo = [
        (v, s)
        for v in variants
        for s in seeds
        if not (runs / f"{v}-seed{s}.json").exists()
    ]  # in the order of the variants: references come before their baselines
    if todo:
        study.load_data()  # raises MissingDataError before any run starts
    failed: dict[tuple[str, int], str] = {}  # (variant, seed) -> why
    running: list[tuple[str, int, subprocess.Popen]] = []

    def finish(variant: str, seed: int, process: subprocess.Popen) -> None:
        if process.wait() != 0:
            failed[variant, seed] = f"exit {process.returncode}"

    for variant, seed in todo:
        if variant in study.baselines:  # its seed's reference run must be complete
            for run in [r for r in running if r[1] == seed]:
                if run[0] not in study.baselines:
                    finish(*run)
            broken = [v for v, s in failed if s == seed and v not in study.baselines]
            if broken:
                failed[variant, seed] = f"not run: {broken[0]} seed {seed} failed"
                continue
        command = [
            sys.executable,
            str(study.script),
            "--run",
            variant,
            "--seed",
            str(seed),
            "--epochs",
            str(args.epochs),
            "--out",
            str(runs),
        ]
        if args.limit:
            command += ["--limit", str(args.limit)]
        running.append((variant, seed, subprocess.Popen(command, cwd=HERE)))
        if len(running) >= args.jobs:
            finish(*running.pop(0))
    for run in running:
        finish(*run)
    if failed:
        raise SystemExit(
            f"{study.name}: {len(failed)} run(s) failed: "
            + ", ".join(f"{v} seed {s} ({why})" for (v, s), why in failed.items())
            + f"; their errors are printed above. Fix them and run again (the "
            f"finished runs in {runs} are kept)"
        )


def layer_weight_counts(model, names) -> dict[str, int]:
    """Stored weights of each named layer, whatever its factorization."""
    from _baselines import weight_count

    modules = dict(model.named_modules())
    return {name: weight_count(modules[name]) for name in names}


def layer_weights(study: Study, history: dict, name: str) -> int:
    from tuckerflow.ranks import parameter_count

    if name in history.get("layer_weights", {}):
        return history["layer_weights"][name]
    ranks = history["epochs"][-1]["ranks"]
    if name in ranks:
        return parameter_count(study.layers[name], ranks[name])
    return int(np.prod(study.layers[name]))  # a dense layer


def report(study: Study, runs: pathlib.Path, out_name: str, folder=None) -> None:
    from _common import save, table

    rows = []
    for variant in study.variants:
        histories = [
            json.loads(path.read_text())
            for path in sorted(runs.glob(f"{variant}-seed*.json"))
        ]
        if not histories:
            continue
        accuracy = np.array([100 * h["final_accuracy"] for h in histories])
        finite = np.array([np.isfinite(h["epochs"][-1]["loss"]) for h in histories])
        converged = accuracy[finite]
        weights = np.array([h["weights"] for h in histories])
        conv = np.array(
            [
                sum(layer_weights(study, h, n) for n in study.conv_layers)
                for h in histories
            ]
        )
        per_epoch = np.array(
            [[100 * e["test_accuracy"] for e in h["epochs"]] for h in histories]
        )
        swing = float(np.mean(per_epoch[:, -3:].max(1) - per_epoch[:, -3:].min(1)))
        rows.append(
            {
                "variant": variant,
                "seeds": len(histories),
                "diverged": int((~finite).sum()),
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_std": float(accuracy.std(ddof=1))
                if len(accuracy) > 1
                else 0.0,
                "converged_accuracy_mean": float(converged.mean())
                if len(converged)
                else None,
                "converged_accuracy_std": float(converged.std(ddof=1))
                if len(converged) > 1
                else 0.0,
                "weights_mean": float(weights.mean()),
                "compression_all": float(1 - weights.mean() / study.all_weights),
                "compression_conv": float(1 - conv.mean() / study.conv_weights),
                "last3_epoch_swing": swing,
                "median_step_ms": float(
                    np.median([h["median_step_ms"] for h in histories])
                ),
            }
        )
    if not rows:
        raise SystemExit(
            f"{study.name}: no finished runs in {runs}: run the study first (--all "
            "or --quick)"
        )
    print(
        table(
            rows,
            [
                ("variant", "variant", "s"),
                ("seeds", "seeds", "d"),
                ("diverged", "diverged", "d"),
                ("accuracy_mean", "acc %", ".2f"),
                ("accuracy_std", "std", ".2f"),
                ("compression_all", "compr. all", ".2%"),
                ("compression_conv", "compr. conv", ".2%"),
                ("last3_epoch_swing", "swing pp", ".2f"),
                ("median_step_ms", "ms/step", ".1f"),
            ],
        )
    )
    path = save(out_name, {"protocol": study.protocol, "rows": rows}, folder)
    print(f"saved {path}")
    plot(study, rows, path.with_suffix(".png"))


def plot(study: Study, rows, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for row in rows:
        if row["converged_accuracy_mean"] is None:
            continue
        plural = "s" if row["seeds"] != 1 else ""
        label = f"{row['variant']} ({row['seeds']} seed{plural}"
        if row["diverged"]:
            label += f", {row['diverged']} diverged; the others shown"
        axis.errorbar(
            row["weights_mean"],
            row["converged_accuracy_mean"],
            yerr=row["converged_accuracy_std"],
            fmt="o",
            capsize=3,
            label=label + ")",
        )
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel(
        f"stored weights (log scale; the dense network has {study.all_weights:,})"
    )
    axis.set_ylabel("final test accuracy (%), mean and std")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot saved to {path}")


def main(study: Study, doc: str) -> None:
    """The command line of a study; a missing data set exits 1 with its install
    command (in every mode: ``--run``, ``--all``, ``--quick``)."""
    from tuckerflow.datasets import MissingDataError

    try:
        _main(study, doc)
    except MissingDataError as error:
        raise SystemExit(f"{study.script.name}: {error}") from None


def _main(study: Study, doc: str) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--run", choices=study.variants)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=study.epochs)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder of the per-run files")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="subset for --all"
    )
    parser.add_argument(
        "--variants", nargs="+", default=None, help="subset for --all, in this order"
    )
    args = parser.parse_args()
    runs = pathlib.Path(args.out) if args.out else HERE / "results" / study.runs
    if args.quick:
        args.epochs, args.limit = 1, 6000
        folder = pathlib.Path(args.out) if args.out else HERE / "results"
        runs = folder / f"{study.runs}_quick"
        args.out = str(runs)
        run_all(study, args, list(study.quick_variants), (0,), runs)
        report(study, runs, f"{study.name}_quick", folder)
        return
    if args.run:
        run_one(study, args.run, args.seed, args.epochs, args.limit, runs)
    if args.all:
        variants = args.variants or study.variants
        unknown = sorted(set(variants) - set(study.variants))
        if unknown:
            parser.error(f"--variants: unknown {unknown}; choose from {study.variants}")
        run_all(study, args, variants, tuple(args.seeds or study.seeds), runs)
    if args.report:
        report(study, runs, study.name)
