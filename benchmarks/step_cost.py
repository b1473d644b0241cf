"""Cost of one TDLRT step, split by phase, relative to one dense mode product.

For each tensor shape and rank: time ``tdlrt_step`` (median of repeats) with the phases
recorded by :mod:`tuckerflow.profiling` (gradient contractions, QR/augmentation, core
step, truncation), and the unavoidable cost of touching the gradient once,
``mode_dot(grad, U_1.T, 0)``. The ratio step / mode product is the figure of merit:
the step's contractions touch the gradient about three times (see
:class:`tuckerflow.contractions.GradientContractions`); target at most 4 for d = 3.

Run: ``python benchmarks/step_cost.py [--quick] [--backends numpy pytorch]``
Writes ``benchmarks/results/step_cost.json`` (``step_cost_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorly as tl
from _common import median_seconds, save, table

import tuckerflow as tf
from tuckerflow.profiling import record_phases

FULL = [
    ((128, 128, 128), [8, 16, 32, 64]),
    ((256, 256, 256), [8, 16, 32, 64]),
    ((256, 256, 3, 3), [8, 16, 32, 64]),
]
QUICK = [((64, 64, 64), [8, 16]), ((128, 128, 3, 3), [8, 16])]
PHASES = ["contractions", "augmentation", "core step", "truncation"]


def rank_for(shape, r):
    return tuple(min(n, r) for n in shape)


def run_case(backend, shape, r, repeats, device):
    context = {"device": device} if device else {}
    sync = None
    if device and device.startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
    elif backend == "cupy":
        import cupy

        sync = cupy.cuda.Device().synchronize
    with tf.use_backend(backend):
        rank = rank_for(shape, r)
        point = tf.random_tucker(shape, rank, random_state=0, **context)
        grad = tl.tensor(
            np.random.default_rng(1).standard_normal(shape),
            dtype=tl.backend.float64,
            **context,
        )
        U1 = point.factors[0]
        mode_product = median_seconds(
            lambda: tl.tenalg.mode_dot(grad, tl.transpose(U1), 0),
            repeats=repeats,
            sync=sync,
        )

        def step():
            return tf.tdlrt_step(point, grad, 0.1, rank=rank)

        total = median_seconds(step, repeats=repeats, sync=sync)
        with record_phases(sync=sync) as seconds:
            for _ in range(repeats):
                step()
        phases = {name: seconds.get(name, 0.0) / repeats for name in PHASES}
    return {
        "backend": backend + (f":{device}" if device else ""),
        "shape": "x".join(map(str, shape)),
        "rank": r,
        "mode_product_ms": 1e3 * mode_product,
        "step_ms": 1e3 * total,
        "ratio": total / mode_product,
        **{f"{name}_ms": 1e3 * value for name, value in phases.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--backends", nargs="+", default=["numpy", "pytorch"])
    parser.add_argument("--device", default=None, help="e.g. cuda for pytorch")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None, help="results folder")
    args = parser.parse_args()
    cases = QUICK if args.quick else FULL
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    for backend in args.backends:
        if backend not in tf.available_backends():
            print(f"skipping {backend}: not available here")
            continue
        for shape, ranks in cases:
            for r in ranks:
                row = run_case(backend, shape, r, repeats, args.device)
                rows.append(row)
                print(
                    f"{row['backend']:>8} {row['shape']:>12} r={r:<3} "
                    f"step {row['step_ms']:9.2f} ms = "
                    f"{row['ratio']:5.2f} mode products",
                    flush=True,
                )
    columns = [
        ("backend", "backend", "s"),
        ("shape", "shape", "s"),
        ("rank", "r", "d"),
        ("mode_product_ms", "mode prod ms", ".2f"),
        ("step_ms", "step ms", ".2f"),
        ("ratio", "ratio", ".2f"),
        ("contractions_ms", "contract ms", ".2f"),
        ("augmentation_ms", "QR/aug ms", ".2f"),
        ("core step_ms", "core ms", ".2f"),
        ("truncation_ms", "trunc ms", ".2f"),
    ]
    print()
    print(table(rows, columns))
    path = save(
        "step_cost_quick" if args.quick else "step_cost",
        {"repeats": repeats, "dtype": "float64", "rows": rows},
        args.out,
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
