"""Study 2a: compressing a pretrained CNN (the ccexam MNIST classifier, about 99%).

The convolutions and the hidden linear layer are tuckerized by truncated HOSVD of their
pretrained weights at several tolerances (the 10-way output layer stays dense). For
each tolerance:

* ``HOSVD only``: test accuracy with no training;
* ``TDLRT``: one epoch of TDLRT fine-tuning (SGD momentum 0.9, lr 0.01, tolerance 0.05
  during training, ranks free to adapt);
* ``vanilla``: one epoch of plain SGD on the Tucker factors at the same initial ranks
  (tltorch-style fine-tuning, ``method="vanilla"``), same optimizer settings.

Compression is over the weights of the tuckerized layers (420,128).

Budget mode (issue 15): the same layers tuckerized with a global budget of 10% and 5%
of those weights (``tuckerize(budget=...)``, ranks shared by the default criterion),
then one epoch at that budget (``TDLRT(budget=...)``: the ranks move between layers,
the count is held) with a learning-rate sweep for each method, SGD momentum 0.9,
batch 128, seed 0, then seeds 1 and 2 at each method's best learning rate:

* ``TDLRT``: one ``lr`` for every parameter;
* ``TDLRT lr·σ²``: every Tucker layer in its own parameter group with ``lr`` times
  its mean squared core singular value (:func:`vanilla_equivalent_groups`), every
  other parameter at ``lr``: the step vanilla factor SGD takes at ``lr``, in TDLRT's
  units (see ``benchmarks/pretrained_lr_diagnosis.py``);
* ``vanilla``: SGD on the factors at the initial ranks.

Where a method's best learning rate fell on the edge of its grid, ``EXTRA`` extends it;
``--levels 0.05 --no-tolerance --methods NAME --merge`` re-runs one sweep and replaces
only its rows in the result file. The same run repeated in another process can end a
few tenths of a point elsewhere (seen for ``TDLRT lr·σ²`` at 5%, whose committed sweep
is such a re-run; not traced: the only random draw is the seeded data order, so
presumably rounding that differs between processes, amplified over an epoch near the
stable step): compare methods through the spread over seeds, not the last digit.

Run: ``python benchmarks/pretrained_compression.py [--quick]``
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import statistics
import time

import torch
import torch.nn.functional as F
from _common import RESULTS, save, table
from _train import accuracy

from tuckerflow.datasets import MissingDataError, load_mnist
from tuckerflow.nn import TDLRT, TuckerLayer, compression_report, tuckerize
from tuckerflow.nn.models import MNIST_MEAN, MNIST_STD, pretrained_mnist_cnn

TUCKERIZED = 420_128  # dense weights of the tuckerized layers
LEVELS = (0.10, 0.05)  # budget mode: fraction of TUCKERIZED kept
GRIDS = {  # budget mode: learning rates swept with seed 0
    "TDLRT": (0.01, 0.02, 0.03, 0.05, 0.1),
    "TDLRT lr·σ²": (0.0005, 0.001, 0.002, 0.003, 0.005),
    "vanilla": (0.001, 0.002, 0.003, 0.005, 0.01),
}
# added where a method's best was on the grid's edge in the first full run
EXTRA = {(0.05, "TDLRT lr·σ²"): (0.0075, 0.01)}
PROTOCOL = (
    "One epoch of fine-tuning, batch 128, SGD momentum 0.9. Tolerance mode: lr 0.01, "
    "TDLRT tolerance 0.05. Budget mode: the budget held during training, a "
    "learning-rate sweep with seed 0, then seeds 1 and 2 at each method's best."
)
MORE_SEEDS = (1, 2)  # at each method's best learning rate
QUICK_GRIDS = {"TDLRT": (0.03,), "TDLRT lr·σ²": (0.003,), "vanilla": (0.003,)}


def core_amplification(layer: TuckerLayer) -> float:
    """Mean over the truncated modes of ``||C||^2 / r_i``: the mean squared singular
    value of the core unfoldings, by which a vanilla factor step at ``lr`` moves the
    weight (``dW = -lr G_(i) V_i S_i^T S_i V_i^T``) where TDLRT moves it by ``lr``."""
    core = layer.core.detach()
    squared = float(core.norm()) ** 2
    modes = [m for m in range(core.ndim) if core.shape[m] < layer.weight_shape[m]]
    if not modes:
        return 1.0
    return statistics.fmean(squared / core.shape[m] for m in modes)


def vanilla_equivalent_groups(model, lr: float) -> list[dict]:
    """Parameter groups: each Tucker layer at ``lr * core_amplification(layer)``,
    everything else at ``lr``."""
    groups, seen = [], set()
    for module in model.modules():
        if isinstance(module, TuckerLayer):
            params = module.tucker_parameters()
            seen |= {id(p) for p in params}
            groups.append({"params": params, "lr": lr * core_amplification(module)})
    rest = [p for p in model.parameters() if id(p) not in seen]
    return [*groups, {"params": rest, "lr": lr}]


def make_optimizer(model, method: str, lr: float, budget: int) -> TDLRT:
    if method == "TDLRT lr·σ²":
        params = vanilla_equivalent_groups(model, lr)
    else:
        params = model
    return TDLRT(
        params,
        lr=lr,
        momentum=0.9,
        budget=budget,
        method="vanilla" if method == "vanilla" else "auto",
    )


def fine_tune(model, optimizer, images, labels, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    model.train()
    for start in range(0, len(images), 128):
        index = order[start : start + 128]
        optimizer.zero_grad()
        F.cross_entropy(model(images[index]), labels[index]).backward()
        optimizer.step()


def budget_sweep(base, level, grids, extra, seeds, data, rows) -> None:
    """HOSVD start at ``level`` of the weights kept, then every method's sweep."""
    images, labels, test_images, test_labels = data
    budget = round(level * TUCKERIZED)
    start = tuckerize(copy.deepcopy(base), budget=budget, skip=("classifier.2",))
    report = compression_report(start)
    rows.append(
        {
            "kept": level,
            "method": "HOSVD only",
            "compression": report.compression,
            "accuracy": accuracy(start, test_images, test_labels),
            "ranks": {r["name"]: list(r["rank"]) for r in report.rows},
        }
    )

    def run(method: str, lr: float, seed: int) -> dict:
        model = copy.deepcopy(start)
        began = time.perf_counter()
        fine_tune(
            model, make_optimizer(model, method, lr, budget), images, labels, seed
        )
        report = compression_report(model)
        row = {
            "kept": level,
            "method": method,
            "lr": lr,
            "seed": seed,
            "compression": report.compression,
            "accuracy": accuracy(model, test_images, test_labels),
            "ranks": {r["name"]: list(r["rank"]) for r in report.rows},
            "seconds": time.perf_counter() - began,
        }
        print(
            f"kept {level:g} {method} lr {lr:g} seed {seed}: {row['accuracy']:.4f}",
            flush=True,
        )
        return row

    for method, grid in grids.items():
        grid = (*grid, *extra.get((level, method), ()))
        runs = [run(method, lr, 0) for lr in grid]
        rows.extend(runs)
        best = max(runs, key=lambda r: r["accuracy"])
        rows.extend(run(method, best["lr"], seed) for seed in seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--levels", type=float, nargs="*", default=None, help="budget levels kept"
    )
    parser.add_argument("--no-tolerance", action="store_true")
    parser.add_argument("--no-seeds", action="store_true")
    parser.add_argument(
        "--methods", nargs="*", default=None, help="budget-mode methods to run"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the runs made now in the existing result file",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_mnist()
    images = (torch.from_numpy(data["train"][0]) - MNIST_MEAN) / MNIST_STD
    labels = torch.from_numpy(data["train"][1])
    test_images = (torch.from_numpy(data["test"][0]) - MNIST_MEAN) / MNIST_STD
    test_labels = torch.from_numpy(data["test"][1])
    tolerances = (0.4,) if args.quick else (0.2, 0.4, 0.6, 0.7)
    levels = LEVELS[:1] if args.quick else LEVELS
    grids = QUICK_GRIDS if args.quick else GRIDS
    extra = {} if args.quick else EXTRA
    if args.methods is not None:
        grids = {m: g for m, g in grids.items() if m in args.methods}
    seeds = () if args.quick or args.no_seeds else MORE_SEEDS
    if args.levels is not None:
        levels = tuple(args.levels)
    if args.no_tolerance:
        tolerances = ()
    if args.quick:
        images, labels = images[:3000], labels[:3000]
        test_images, test_labels = test_images[:2000], test_labels[:2000]
    base = pretrained_mnist_cnn()
    rows = [
        {
            "tol": 0.0,
            "method": "pretrained (dense)",
            "compression": 0.0,
            "accuracy": accuracy(base, test_images, test_labels),
            "ranks": {},
        }
    ]
    for tol in tolerances:
        # the published table predates the dense-size cap: keep its ranks (features.0
        # stores a few more weights than dense at the larger tolerances)
        start = tuckerize(
            copy.deepcopy(base), tol=tol, skip=("classifier.2",), cap_at_dense=False
        )
        report = compression_report(start)
        rows.append(
            {
                "tol": tol,
                "method": "HOSVD only",
                "compression": report.compression,
                "accuracy": accuracy(start, test_images, test_labels),
                "ranks": {r["name"]: list(r["rank"]) for r in report.rows},
            }
        )
        for method in ("TDLRT", "vanilla"):
            model = copy.deepcopy(start)
            optimizer = TDLRT(
                model,
                lr=0.01,
                momentum=0.9,
                tol=0.05,
                method="auto" if method == "TDLRT" else "vanilla",
            )
            fine_tune(model, optimizer, images, labels, seed=0)
            report = compression_report(model)
            rows.append(
                {
                    "tol": tol,
                    "method": f"{method} 1 epoch",
                    "compression": report.compression,
                    "accuracy": accuracy(model, test_images, test_labels),
                    "ranks": {r["name"]: list(r["rank"]) for r in report.rows},
                }
            )
            print(rows[-1]["method"], tol, f"{rows[-1]['accuracy']:.4f}", flush=True)
    print(
        table(
            rows,
            [
                ("tol", "HOSVD tol", "g"),
                ("method", "method", "s"),
                ("compression", "compression", ".2%"),
                ("accuracy", "test acc", ".4f"),
            ],
        )
    )
    budget_rows: list[dict] = []
    for level in levels:
        budget_sweep(
            base,
            level,
            grids,
            extra,
            seeds,
            (images, labels, test_images, test_labels),
            budget_rows,
        )
    name = "pretrained_compression_quick" if args.quick else "pretrained_compression"
    if args.merge:  # keep the other runs of the existing file
        old = json.loads(
            (pathlib.Path(args.out or RESULTS) / f"{name}.json").read_text()
        )
        if not tolerances:
            rows = old["rows"]
        redone = {(r["kept"], r["method"]) for r in budget_rows}
        budget_rows = [
            r for r in old["budget_rows"] if (r["kept"], r["method"]) not in redone
        ] + budget_rows
        budget_rows.sort(key=lambda r: -r["kept"])  # stable: levels in order
    path = save(
        name,
        {"protocol": PROTOCOL, "rows": rows, "budget_rows": budget_rows},
        args.out,
    )
    print(f"saved {path}")


if __name__ == "__main__":
    try:
        main()
    except MissingDataError as error:  # MNIST or the pretrained CNN
        raise SystemExit(f"pretrained_compression.py: {error}") from None
