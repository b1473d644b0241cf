"""Data-parallel TDLRT: LeNet-5 on MNIST under ``torchrun``, throughput vs one process.

The driver launches ``torchrun --nproc_per_node=P`` for every ``P`` in ``--workers``
(default 1 and 2) on this script's worker mode, with the same global batch (128) split
over the workers, DDP for the ordinary parameters and the TDLRT optimizer averaging the
Tucker gradients itself (``tuckerflow.nn.prepare_ddp``). Every worker gets
``cores / P`` threads, so the runs use the same CPU. Reported: training images per
second over the timed steps, the speed-up over one process, and the final test
accuracy and ranks (identical across workers by construction).

Run: ``python benchmarks/distributed_lenet.py [--quick] [--workers 1 2]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from tuckerflow.datasets import load_mnist
    from tuckerflow.nn import TDLRT, prepare_ddp, tuckerize
    from tuckerflow.nn.models import LeNet5

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    data = load_mnist()
    images, labels = (torch.from_numpy(a) for a in data["train"])
    torch.manual_seed(0)
    model = tuckerize(LeNet5(), init="random")
    ddp = DistributedDataParallel(prepare_ddp(model))
    optimizer = TDLRT(model, lr=0.05, momentum=0.9, tol=0.1)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    share = args.batch // world
    timed = 0.0
    for step in range(args.warmup + args.steps):
        index = order[(step * args.batch) % (len(images) - args.batch) :][: args.batch]
        index = index[rank * share : (rank + 1) * share]
        started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(ddp(images[index]), labels[index]).backward()
        optimizer.step()
        if step >= args.warmup:
            timed += time.perf_counter() - started
    dist.barrier()
    if rank == 0:
        test_images, test_labels = (torch.from_numpy(a) for a in data["test"])
        with torch.no_grad():
            accuracy = (model(test_images).argmax(1) == test_labels).float().mean()
        result = {
            "workers": world,
            "threads_per_worker": torch.get_num_threads(),
            "steps": args.steps,
            "global_batch": args.batch,
            "seconds": timed,
            "images_per_second": args.steps * args.batch / timed,
            "test_accuracy": float(accuracy),
            "ranks": {
                name: list(m.rank)
                for name, m in model.named_modules()
                if hasattr(m, "core")
            },
        }
        pathlib.Path(args.result).write_text(json.dumps(result))
    # DDP before the process group (as tests/test_distributed.py): a DDP left for
    # interpreter exit outlives its group, and its teardown aborts the process now
    # and then ("terminate called without an active exception", SIGABRT)
    dist.barrier()
    del ddp
    gc.collect()
    dist.destroy_process_group()


def driver(args) -> None:
    from _common import save, table

    from tuckerflow.datasets import MissingDataError, load_mnist

    try:  # once here: a missing data set stops the study before torchrun starts
        load_mnist()
    except MissingDataError as error:
        raise SystemExit(f"distributed_lenet.py: {error}") from None

    rows = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as folder:
            result = pathlib.Path(folder) / "result.json"
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={workers}",
                str(pathlib.Path(__file__).resolve()),
                "--worker",
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch",
                str(args.batch),
                "--result",
                str(result),
            ]
            env = {
                **os.environ,
                "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers)),
            }
            subprocess.run(command, check=True, env=env, cwd=HERE)
            rows.append(json.loads(result.read_text()))
            print(
                f"{workers} worker(s): {rows[-1]['images_per_second']:.0f} images/s",
                flush=True,
            )
    base = rows[0]["images_per_second"]
    for row in rows:
        row["speedup"] = row["images_per_second"] / base
    print(
        table(
            rows,
            [
                ("workers", "workers", "d"),
                ("threads_per_worker", "threads", "d"),
                ("images_per_second", "images/s", ".0f"),
                ("speedup", "speed-up", ".2f"),
                ("test_accuracy", "test acc", ".4f"),
            ],
        )
    )
    path = save(
        "distributed_lenet_quick" if args.quick else "distributed_lenet",
        {"cpu_count": os.cpu_count(), "rows": rows},
        args.out,
    )
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 20 if args.quick else 200
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
