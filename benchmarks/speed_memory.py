"""Study 4: time and memory of one training step, dense vs Tucker (LeNet-5, small VGG).

Batch 128 of 28 x 28 images; for each network and each compression level (50%, 90%,
95% of the weights of its convolution and linear layers, reached by one channel rank
for all layers):

* ``full``: the dense network with SGD;
* ``vanilla (ours)``: our Tucker layers, factorized forward, plain SGD on the factors;
* ``vanilla (tltorch)``: tltorch Tucker ``FactorizedConv`` + low-rank linears (if
  installed);
* ``TDLRT dense`` / ``TDLRT factorized``: the TDLRT optimizer with either forward
  (ranks pinned so that every step has the same size).

Every variant runs in its own process: the median step time over the repeats, the
ratio to the full step measured in the same run of the script, the process's peak
resident memory (``ru_maxrss``; on a GPU ``torch.cuda.max_memory_allocated``) and, for
TDLRT, the fraction of the step spent in QR/SVD/truncation (augmentation + truncation
phases of :mod:`tuckerflow.profiling`).

Run: ``python benchmarks/speed_memory.py [--quick] [--device cuda]`` (results in
``results/speed_memory.json``, or ``results/speed_memory_cuda.json`` on the GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
NETWORKS = ("lenet", "vgg")
LEVELS = (0.5, 0.9, 0.95)
VARIANTS = (
    "full",
    "vanilla (ours)",
    "vanilla (tltorch)",
    "TDLRT dense",
    "TDLRT factorized",
)
# on a GPU, also with the small SVDs on the host (tuckerflow.set_host_factorizations)
HOST_LINALG = "TDLRT factorized, small SVDs on the host"


def network(name: str):
    from tuckerflow.nn.models import LeNet5, SmallVGG

    return LeNet5() if name == "lenet" else SmallVGG()


def rank_for(name: str, level: float) -> int:
    """Largest common channel rank whose Tucker layers reach the compression level
    (compression decreases with the rank: bisection on the parameter count)."""
    from torch import nn

    from tuckerflow.ranks import parameter_count

    shapes = [
        tuple(m.weight.shape)
        for m in network(name).modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    dense = sum(math.prod(s) for s in shapes)

    def compression(rank: int) -> float:
        total = 0
        for shape in shapes:
            ranks = [min(rank, n) if i < 2 else n for i, n in enumerate(shape)]
            for mode in range(len(ranks)):  # a valid multilinear rank
                ranks[mode] = min(ranks[mode], math.prod(ranks) // ranks[mode])
            total += parameter_count(shape, ranks)
        return 1 - total / dense

    low, high = 1, 512
    while low < high:
        middle = (low + high + 1) // 2
        if compression(middle) >= level:
            low = middle
        else:
            high = middle - 1
    return low


def measure(args) -> None:
    import resource
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F

    from tuckerflow import set_host_factorizations
    from tuckerflow.nn import TDLRT, compression_report, tuckerize
    from tuckerflow.profiling import record_phases

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = network(args.network)
    rank = None if args.variant == "full" else rank_for(args.network, args.level)
    if args.variant == "full":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    elif args.variant == "vanilla (tltorch)":
        from _baselines import tltorch_tucker

        names = {
            n: m
            for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
        }
        ranks = {}
        for n, m in names.items():
            shape = tuple(m.weight.shape)
            ranks[n] = tuple(min(rank, s) if i < 2 else s for i, s in enumerate(shape))
        model = tltorch_tucker(model, ranks)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        implementation = "dense" if args.variant == "TDLRT dense" else "factorized"
        model = tuckerize(
            model, init="random", rank=rank, implementation=implementation
        )
        for module in model.modules():
            if hasattr(module, "core"):
                module.min_rank = module.max_rank = module.rank
        method = "vanilla" if args.variant.startswith("vanilla") else "auto"
        optimizer = TDLRT(model, lr=0.01, momentum=0.9, method=method)
        if args.variant == HOST_LINALG:
            set_host_factorizations("auto")
    model.to(device)
    x = torch.randn(128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.repeats):
        sync()
        started = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - started)
    update_fraction = None
    if args.variant.startswith("TDLRT"):
        with record_phases(sync=sync if device.type == "cuda" else None) as phases:
            phase_started = time.perf_counter()
            for _ in range(args.repeats):
                step()
            elapsed = time.perf_counter() - phase_started
        update_fraction = (
            phases.get("augmentation", 0.0) + phases.get("truncation", 0.0)
        ) / elapsed
    memory = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    compression = (
        0.0
        if args.variant == "full"
        else (
            compression_report(model).compression
            if not args.variant.endswith("(tltorch)")
            else args.level
        )
    )
    result = {
        "network": args.network,
        "level": args.level,
        "variant": args.variant,
        "rank": rank,
        "compression": compression,
        "median_ms": 1e3 * float(np.median(times)),
        "peak_memory_mib": memory,
        "qr_svd_truncation_fraction": update_fraction,
    }
    print(json.dumps(result))


def driver(args) -> None:
    from _common import save, table

    rows = []
    networks = ("lenet",) if args.quick else NETWORKS
    levels = (0.9,) if args.quick else tuple(args.levels or LEVELS)
    variants = VARIANTS if args.device == "cpu" else (*VARIANTS, HOST_LINALG)
    unknown = set(args.variants or ()) - set(variants)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {variants}")
    variants = [v for v in variants if v in (args.variants or variants)]
    for name in networks:
        for level in levels:
            for variant in variants:
                if variant == "full" and level != levels[0]:
                    continue
                command = [
                    sys.executable,
                    __file__,
                    "--measure",
                    "--network",
                    name,
                    "--level",
                    str(level),
                    "--variant",
                    variant,
                    "--repeats",
                    str(args.repeats),
                    "--device",
                    args.device,
                ]
                out = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
                if out.returncode != 0:  # recorded, not dropped: a failure is a result
                    lines = out.stderr.strip().splitlines() or ["no output"]
                    row = {"network": name, "level": level, "variant": variant}
                    row["error"] = lines[-1]
                    rows.append(row)
                    print(f"{name} {level:.0%} {variant}: FAILED ({lines[-1]})")
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{name} {level:.0%} {variant}: {row['median_ms']:.1f} ms, "
                    f"{row['peak_memory_mib']:.0f} MiB",
                    flush=True,
                )
    for name in networks:
        full = next(
            (r for r in rows if r["network"] == name and r["variant"] == "full"), {}
        )
        for row in rows:
            if row["network"] == name and "median_ms" in row and "median_ms" in full:
                row["ratio_to_full"] = row["median_ms"] / full["median_ms"]
    print(
        table(
            rows,
            [
                ("network", "net", "s"),
                ("level", "target", ".0%"),
                ("variant", "variant", "s"),
                ("compression", "compr.", ".1%"),
                ("median_ms", "ms/step", ".1f"),
                ("ratio_to_full", "x full", ".2f"),
                ("peak_memory_mib", "peak MiB", ".0f"),
            ],
        )
    )
    name = args.name or (
        "speed_memory" if args.device == "cpu" else f"speed_memory_{args.device}"
    )
    path = save(
        f"{name}_quick" if args.quick else name,
        {"device": args.device, "batch": 128, "repeats": args.repeats, "rows": rows},
        args.out,
    )
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--levels", type=float, nargs="+", help="subset of the levels")
    parser.add_argument("--variants", nargs="+", help="subset, by name")
    parser.add_argument("--name", help="result file name (default speed_memory[_dev])")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--network", default="lenet", help=argparse.SUPPRESS)
    parser.add_argument("--level", type=float, default=0.9, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 5 if args.quick else 30
    if args.measure:
        measure(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
