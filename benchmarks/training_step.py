"""Time of one training step (forward, backward, update): dense vs Tucker training.

Two set-ups, each measured in one run so the ratios are comparable:

* ``lenet``: LeNet-5, batch 128 of 28 x 28 images: full (dense) training with SGD,
  vanilla Tucker training (ours, ``method="vanilla"``), and TDLRT, each Tucker variant
  with the ``dense`` and the ``factorized`` forward, at ranks 32 (channels).
* ``conv``: one 128 -> 128, 3 x 3 convolution on a 32 x 128 x 16 x 16 batch at Tucker
  rank (32, 32, 3, 3): dense Conv2d, tltorch's Tucker ``FactorizedConv`` (if
  installed), our vanilla and TDLRT steps; ranks pinned so every step has the same
  size.

Medians of repeated steps, reported as milliseconds and as ratios to the dense step.

Run: ``python benchmarks/training_step.py [--quick]``
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import median_seconds, save, table

from tuckerflow.nn import TDLRT, TuckerConv2d, tuckerize
from tuckerflow.nn.models import LeNet5
from tuckerflow.profiling import record_phases


def step_function(model, optimizer, x, y, loss="ce"):
    def step():
        optimizer.zero_grad()
        out = model(x)
        value = F.cross_entropy(out, y) if loss == "ce" else out.pow(2).mean()
        value.backward()
        optimizer.step()

    return step


def lenet_rows(repeats: int, batch: int, rank: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    rows = []
    dense = LeNet5()
    optimizer = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9)
    reference = median_seconds(step_function(dense, optimizer, x, y), repeats=repeats)
    rows.append({"case": "lenet", "variant": "full (dense SGD)", "ms": 1e3 * reference})
    for implementation in ("dense", "factorized"):
        for method in ("vanilla", "auto"):
            model = tuckerize(
                LeNet5(), init="random", rank=rank, implementation=implementation
            )
            for layer in model.modules():  # pinned ranks: every step the same size
                if hasattr(layer, "core"):
                    layer.min_rank = layer.max_rank = layer.rank
            optimizer = TDLRT(model, lr=0.01, momentum=0.9, tol=0.1, method=method)
            seconds = median_seconds(
                step_function(model, optimizer, x, y), repeats=repeats
            )
            name = "vanilla Tucker" if method == "vanilla" else "TDLRT"
            row = {
                "case": "lenet",
                "variant": f"{name} ({implementation})",
                "ms": 1e3 * seconds,
            }
            if method != "vanilla":
                with record_phases() as phases:
                    for _ in range(repeats):
                        step_function(model, optimizer, x, y)()
                row["update_ms"] = 1e3 * sum(phases.values()) / repeats
            rows.append(row)
    for row in rows:
        row["ratio_to_full"] = row["ms"] / (1e3 * reference)
    return rows


def conv_rows(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(32, 128, 16, 16)
    rank = (32, 32, 3, 3)
    rows = []
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    optimizer = torch.optim.SGD(conv.parameters(), lr=1e-3)
    reference = median_seconds(
        step_function(conv, optimizer, x, None, "l2"), repeats=repeats
    )
    rows.append(
        {"case": "conv", "variant": "Conv2d (dense SGD)", "ms": 1e3 * reference}
    )
    try:
        import tltorch

        for implementation in ("factorized", "reconstructed"):
            layer = tltorch.FactorizedConv.from_conv(
                conv, rank=rank, factorization="tucker", implementation=implementation
            )
            optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3)
            seconds = median_seconds(
                step_function(layer, optimizer, x, None, "l2"), repeats=repeats
            )
            rows.append(
                {
                    "case": "conv",
                    "variant": f"tltorch Tucker ({implementation})",
                    "ms": 1e3 * seconds,
                }
            )
    except ImportError:
        print("tltorch not installed: skipping its rows")
    for implementation in ("factorized", "dense"):
        for method in ("vanilla", "auto"):
            layer = TuckerConv2d.from_dense(
                conv,
                rank=rank,
                implementation=implementation,
                min_rank=rank,
                max_rank=rank,
            )
            optimizer = TDLRT(layer.parameters(), lr=1e-3, tol=0.1, method=method)
            seconds = median_seconds(
                step_function(layer, optimizer, x, None, "l2"), repeats=repeats
            )
            name = "ours vanilla" if method == "vanilla" else "ours TDLRT"
            rows.append(
                {
                    "case": "conv",
                    "variant": f"{name} ({implementation})",
                    "ms": 1e3 * seconds,
                }
            )
    for row in rows:
        row["ratio_to_full"] = row["ms"] / (1e3 * reference)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    repeats = 5 if args.quick else 30
    rows = lenet_rows(repeats, 32 if args.quick else 128, 8 if args.quick else 32)
    if not args.quick:
        rows += conv_rows(repeats)
    print(
        table(
            rows,
            [
                ("case", "case", "s"),
                ("variant", "variant", "s"),
                ("ms", "ms/step", ".2f"),
                ("ratio_to_full", "x dense", ".2f"),
            ],
        )
    )
    path = save(
        "training_step_quick" if args.quick else "training_step",
        {"repeats": repeats, "threads": torch.get_num_threads(), "rows": rows},
        args.out,
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
