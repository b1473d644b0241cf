"""Cost of the TDLRT update per optimizer step: factorizations, dispatches, time.

For LeNet-5, the small VGG and a CIFAR-style ResNet-20 (``tuckerflow.nn.models``),
tuckerized at about 90% compression (a global parameter budget of 10% of the dense
weights, random initialisation) with every rank pinned (``min_rank = max_rank =
rank``: every step the same size), one ``TDLRT`` step (heavy-ball momentum 0.9) is
counted and timed:

* ``qr``, ``svd``, ``eigh``: calls of the factorizations through TensorLy (and of
  ``numpy.linalg``, the host path), per step;
* ``dispatches``: every call that goes through a TensorLy backend (``tl.dot``,
  ``tl.reshape``, ...), per step;
* ``fwd_bwd_ms``, ``update_ms``: median time of forward+backward and of
  ``optimizer.step()`` (CPU, the threads PyTorch was given).

Counts are deterministic; times are medians of ``--repeats`` steps.

A second table, ``layers``, times the core's update alone, on ``L`` identical
layer tensors (a 64 x 64 x 3 x 3 convolution at rank (16, 16, 3, 3) with a random
gradient): ``tdlrt_augment_unchecked`` + ``AugmentedStep.finish`` per layer against
the multi-tensor path (:mod:`tuckerflow.integrators.multi`, when present), as time
per layer for ``L`` in 4..64. The per-layer time of a batched path must not grow
with ``L``.

Run: ``python benchmarks/update_cost.py [--quick]``; writes
``benchmarks/results/update_cost/update_cost.json`` (``--tag NAME`` writes
``update_cost_NAME.json``, e.g. ``--tag before``; a subfolder until the benchmarks
page has a study entry for these tables).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time

import numpy as np
import tensorly as tl
import torch
import torch.nn.functional as F
from _common import RESULTS, median_seconds, save, table

import tuckerflow as tf
from tuckerflow.nn import TDLRT, compression_report, tuckerize
from tuckerflow.nn.models import LeNet5, ResNet, SmallVGG

FACTORIZATIONS = ("qr", "svd", "eigh")


@contextlib.contextmanager
def counting():
    """Count TensorLy backend dispatches (by name) and host factorizations.

    Every loaded backend gets, as instance attributes, counting wrappers of its
    functions (``tl.dot`` looks them up on the backend instance at every call).
    """
    counts: collections.Counter = collections.Counter()
    manager = tl.backend.BackendManager
    names = list(manager._functions)
    backends = list(manager._loaded_backends.values())

    def counter(name, function):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapped

    host = {name: getattr(np.linalg, name) for name in FACTORIZATIONS}
    try:
        for backend in backends:
            for name in names:
                function = getattr(backend, name, None)
                if callable(function):
                    backend.__dict__[name] = counter(name, function)
        for name, function in host.items():
            setattr(np.linalg, name, counter(f"host_{name}", function))
        yield counts
    finally:
        for backend in backends:
            for name in names:
                backend.__dict__.pop(name, None)
        for name, function in host.items():
            setattr(np.linalg, name, function)
    for name in FACTORIZATIONS:  # the host path's calls count as factorizations
        counts[name] += counts.pop(f"host_{name}", 0)


NETWORKS = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "small_vgg": (SmallVGG, (1, 28, 28)),
    "resnet20": (ResNet, (3, 32, 32)),
}


def build(name: str, compression: float = 0.9):
    factory, shape = NETWORKS[name]
    torch.manual_seed(0)
    dense = sum(
        m.weight.numel()
        for m in factory().modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    model = tuckerize(factory(), init="random", budget=int((1 - compression) * dense))
    for layer in model.modules():  # pinned ranks: every step the same size
        if hasattr(layer, "core"):
            layer.min_rank = layer.max_rank = layer.rank
    return model, shape


def network_row(name: str, batch: int, repeats: int) -> dict:
    model, shape = build(name)
    optimizer = TDLRT(model, lr=0.01, momentum=0.9, tol=0.1)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))

    def forward_backward():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()

    for _ in range(2):  # warm up (the first step checks every factor)
        forward_backward()
        optimizer.step()
    forward_backward()
    with counting() as counts:
        optimizer.step()
    fwd_bwd, update = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward()
        middle = time.perf_counter()
        optimizer.step()
        fwd_bwd.append(middle - start)
        update.append(time.perf_counter() - middle)
    report = compression_report(model)
    layers = sum(1 for m in model.modules() if hasattr(m, "core"))
    return {
        "network": name,
        "tucker_layers": layers,
        "compression": report.compression,
        **{k: counts[k] for k in FACTORIZATIONS},
        "dispatches": sum(counts.values()),
        "qr_per_layer": counts["qr"] / layers,
        "svd_per_layer": counts["svd"] / layers,
        "fwd_bwd_ms": 1e3 * float(np.median(fwd_bwd)),
        "update_ms": 1e3 * float(np.median(update)),
        "ranks": [list(m.rank) for m in model.modules() if hasattr(m, "core")],
    }


def _layer_problems(count: int, shape, rank, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    problems = []
    for _ in range(count):
        tucker = tf.random_tucker(shape, rank, random_state=int(seed))
        seed += 1
        core = torch.as_tensor(tl.to_numpy(tucker.core), dtype=torch.float32)
        factors = [
            torch.as_tensor(tl.to_numpy(f), dtype=torch.float32) for f in tucker.factors
        ]
        grad = torch.randn(shape, generator=generator)
        problems.append((core, factors, grad))
    return problems


def layer_rows(counts, repeats: int, shape=(64, 64, 3, 3), rank=(16, 16, 3, 3)):
    from tuckerflow.integrators.tdlrt import tdlrt_augment_unchecked

    try:
        from tuckerflow.integrators import multi
    except ImportError:
        multi = None
    rows = []
    for count in counts:
        with tf.use_backend("pytorch"):
            problems = _layer_problems(count, shape, rank)

            def per_layer(problems=problems):
                for core, factors, grad in problems:
                    tdlrt_augment_unchecked(core, factors, grad, 0.01).finish(
                        rank=rank, min_rank=rank, max_rank=rank
                    )

            row = {
                "layers": count,
                "per_layer_ms": 1e3
                * median_seconds(per_layer, repeats=repeats)
                / count,
            }
            if multi is not None:

                def batched(problems=problems, count=count):
                    steps = multi.tdlrt_augment_multi(
                        [p[0] for p in problems],
                        [p[1] for p in problems],
                        [p[2] for p in problems],
                        0.01,
                    )
                    multi.finish_multi(
                        steps, [dict(rank=rank, min_rank=rank, max_rank=rank)] * count
                    )

                row["multi_ms"] = 1e3 * median_seconds(batched, repeats=repeats) / count
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, small")
    parser.add_argument("--tag", default=None, help="suffix of the result file")
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS))
    parser.add_argument("--out", default=None, help="result folder")
    args = parser.parse_args()
    repeats = 2 if args.quick else 10
    batch = 8 if args.quick else 128
    rows = [network_row(name, batch, repeats) for name in args.networks]
    print(
        table(
            rows,
            [
                ("network", "network", "s"),
                ("tucker_layers", "layers", "d"),
                ("compression", "compr.", ".2f"),
                ("qr", "QR", "d"),
                ("svd", "SVD", "d"),
                ("eigh", "eigh", "d"),
                ("dispatches", "dispatches", "d"),
                ("fwd_bwd_ms", "fwd+bwd ms", ".1f"),
                ("update_ms", "update ms", ".1f"),
            ],
        )
    )
    counts = (4, 8) if args.quick else (4, 8, 16, 32, 64)
    layers = layer_rows(counts, repeats)
    print(
        table(
            layers,
            [
                ("layers", "L", "d"),
                ("per_layer_ms", "per-layer path ms/layer", ".2f"),
                ("multi_ms", "multi path ms/layer", ".2f"),
            ],
        )
    )
    name = "update_cost" if args.tag is None else f"update_cost_{args.tag}"
    path = save(
        name,
        {
            "quick": args.quick,
            "batch": batch,
            "repeats": repeats,
            "networks": rows,
            "layers": layers,
        },
        args.out or RESULTS / "update_cost",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
