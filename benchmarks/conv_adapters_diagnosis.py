"""Study 7 diagnosis: why rank-4 Tucker adapters trained by TDLRT trail LoRA r = 4.

In study 7 (``conv_adapters.py``, ccexam CNN -> Fashion-MNIST) the Linear
``classifier.0`` (3136 -> 128) holds about 13,000 of the about 14,500 adapter
parameters of both families, and both end there with a rank-4 update (LoRA r = 4:
``4 (128 + 3136) = 13,056``; Tucker ranks (4, 4): ``16 + 4 (128 + 3136) = 13,072``).
The model classes nearly coincide, so this script compares how they are trained, one
suspect at a time, with the adapter on ``classifier.0`` ONLY (the fresh head trains
in every variant, by the variant's optimizer):

* ``head``: no adapter, only the fresh head trains (AdamW, as the study's
  ``head``): what the adapters add;
* ``lora``: PEFT LoRA r = 4, ``lora_alpha = 8`` (scaling 2), AdamW (weight decay
  0.01), as in the study;
* ``lora-adam-scale1``: LoRA r = 4, ``lora_alpha = 4`` (scaling 1), ``torch.optim.Adam``
  (no weight decay): LoRA's scaling and decay removed;
* ``tucker-fixed``: Tucker adapter at ranks pinned to (4, 4)
  (``min_rank = max_rank = 4``), TDLRT with Adam: every step augments to rank 8 and
  truncates back to 4; Adam's moments live in the K and core coordinates and are
  transported through every change of basis;
* ``tucker-adaptive``: the study's Tucker adapter (rank 4, at most 8) under a TDLRT
  budget equal to LoRA r = 4's adapter parameters on this layer (13,056);
* ``tucker-vanilla``: the ``tucker-fixed`` adapter trained by
  ``TDLRT(method="vanilla", adam=True)``: plain Adam on the factors ``U0``, ``U1``
  and the core, no augmentation or truncation (LoRA's factor parametrization in
  Tucker form, ``dW = U0 C U1^T``);
* ``tucker-fixed-sgd``: ``tucker-fixed`` trained by TDLRT with heavy-ball momentum
  0.9 instead of Adam, the head too (lr in the units of dense SGD: grid 0.03, 0.1,
  0.3, 1);
* ``tucker-fixed-sgd-head-adam``: the same, but the head trains by Adam at
  ``HEAD_LR`` = 1e-2 (LoRA r = 4's best lr in the study) in its own parameter
  group, apart from the adapter's lr and rule (its Adam counterpart is
  ``tucker-fixed-head-adam``);
* ``tucker-fixed-head-adam``: ``tucker-fixed`` with the head apart in the same way
  (Adam at ``HEAD_LR``), the adapter's TDLRT-Adam lr swept over 1e-2, 3e-2, 1e-1
  and 3e-1: whether TDLRT-Adam wants a larger lr than the head tolerates (under
  TDLRT-Adam each singular value of ``dW`` grows by at most about ``lr`` a step).

Protocol: the study's ``--sweep`` data (55,000 training images, 5,000 seeded
held-out validation images, all 10,000 test images), one epoch, batch 128, seed 0,
lr grid 1e-3, 3e-3, 1e-2, 3e-2 and 1e-1 (the study's best lrs were 1e-2; the ends
added so that every best lr is inside the grid; SGD: 0.03, 0.1, 0.3, 1), each
variant's best lr chosen on the validation images (``rows``; ``runs`` holds every
run). Per run: test and validation accuracy, and the learned update ``dW`` of
``classifier.0`` (LoRA: ``scaling B A``, PEFT's ``get_delta_weight``; Tucker:
``C x_0 U0 x_1 U1``): its Frobenius norm, its singular values, its norm every
``CURVE_EVERY`` steps, and, as a check of the bookkeeping, the norm of the effective
update probed through the module's forward (``module(I) - module(0)`` minus the
pretrained weight).

Run: ``python benchmarks/conv_adapters_diagnosis.py [--quick] [--variants ...]
[--threads 1] [--reuse]``. ``--reuse`` keeps the runs of an existing result file of
the same protocol and trains only the missing (variant, lr) pairs. Full: 42 one-epoch
runs; a step is 33 ms (LoRA) to 42 ms (Tucker) at one thread, a run 8-12 s on 55,000
images, about 8 core-minutes with the evaluations. Results:
``results/conv_adapters_diagnosis.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import time

import torch
import torch.nn.functional as F
from _common import RESULTS, save, table
from conv_adapters import (
    SETUPS,
    accuracy,
    fresh_model,
    lora_model,
    prepare,
    split_data,
)
from conv_adapters import build as study_build

from tuckerflow.datasets import MissingDataError, load_fashion_mnist
from tuckerflow.nn import TDLRT, TuckerLayer, add_tucker_adapters
from tuckerflow.nn.layers import reconstruct

VARIANTS = (
    "head",
    "lora",
    "lora-adam-scale1",
    "tucker-fixed",
    "tucker-adaptive",
    "tucker-vanilla",
    "tucker-fixed-sgd",
    "tucker-fixed-sgd-head-adam",
    "tucker-fixed-head-adam",
)
QUICK_VARIANTS = ("lora", "tucker-fixed")
QUICK_LR = {"adam": 1e-2, "sgd": 0.1}
GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SGD_GRID = (0.03, 0.1, 0.3, 1.0)
HEAD_GRID = (1e-2, 3e-2, 1e-1, 3e-1)  # the adapter's lr in tucker-fixed-head-adam
HEAD_LR = 1e-2  # the head's Adam lr in the *-head-adam variants
TARGET = "classifier.0"
RANK = 4
SIGMAS = 8  # singular values of dW recorded
CURVE_EVERY = 43  # steps between recorded ||dW|| (about ten points an epoch)
SETUP = SETUPS["ccexam"]


def grid(variant: str) -> tuple[float, ...]:
    """The variant's learning rates."""
    if "-sgd" in variant:
        return SGD_GRID
    return HEAD_GRID if variant.endswith("-head-adam") else GRID


def lora_budget() -> int:
    """LoRA r = 4's adapter parameters on ``classifier.0`` alone (PEFT's count)."""
    model = lora_model(SETUP, fresh_model(SETUP, 0), RANK, [TARGET])
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def build(variant: str, lr: float, seed: int):
    """``(model, optimizer, adapted module)`` of ``variant`` at ``lr`` (no adapted
    module for ``head``)."""
    if variant == "head":
        model, optimizer, _ = study_build(SETUP, "head", seed, lr)
        return model, optimizer, None
    model = fresh_model(SETUP, seed)
    if variant in ("lora", "lora-adam-scale1"):
        alpha = 2 * RANK if variant == "lora" else RANK
        model = lora_model(SETUP, model, RANK, [TARGET], lora_alpha=alpha)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = (
            torch.optim.AdamW(params, lr=lr)  # weight decay 0.01, as the study
            if variant == "lora"
            else torch.optim.Adam(params, lr=lr)
        )
        module = next(m for m in model.modules() if hasattr(m, "get_delta_weight"))
        return model, optimizer, module
    torch.manual_seed(seed)  # as conv_adapters.build
    pinned = variant != "tucker-adaptive"
    add_tucker_adapters(
        model,
        [TARGET],
        rank=RANK,
        min_rank=RANK if pinned else 1,
        max_rank=RANK if pinned else 2 * RANK,
        verbose=False,
    )
    adapter = [p for p in model.parameters() if p.requires_grad]
    head = list(model.get_submodule(SETUP.head).parameters())
    for p in head:
        p.requires_grad_(True)
    if variant.endswith("-head-adam"):  # the head on Adam at HEAD_LR, apart
        rule = {"momentum": 0.9} if "-sgd" in variant else {"adam": True}
        groups = [
            {"params": adapter, **rule},
            {"params": head, "adam": True, "lr": HEAD_LR},
        ]
        return model, TDLRT(groups, lr=lr), model.get_submodule(TARGET)
    options = {
        "tucker-fixed": {"adam": True},
        "tucker-adaptive": {"adam": True, "budget": lora_budget()},
        "tucker-vanilla": {"adam": True, "method": "vanilla"},
        "tucker-fixed-sgd": {"momentum": 0.9},
    }[variant]
    optimizer = TDLRT(adapter + head, lr=lr, **options)
    return model, optimizer, model.get_submodule(TARGET)


def update(module) -> torch.Tensor:
    """The learned update ``dW`` of the adapted module, ``(128, 3136)``."""
    with torch.no_grad():
        if isinstance(module, TuckerLayer):
            return reconstruct(module.core, list(module.factors)).detach().clone()
        return module.get_delta_weight("default").detach().clone()


def probed_update(module, pretrained: torch.Tensor) -> torch.Tensor:
    """``dW`` read through the module's forward: ``module(I) - module(0)`` is the
    effective weight (transposed), minus the pretrained weight."""
    module = copy.deepcopy(module).eval()
    eye = torch.eye(pretrained.shape[1])
    with torch.no_grad():
        weight = (module(eye) - module(torch.zeros(1, pretrained.shape[1]))).T
    return weight - pretrained


def run(variant: str, lr: float, data, seed: int = 0) -> dict:
    """One epoch of ``variant`` at ``lr``: its row."""
    (x_train, y_train), (x_test, y_test), validation = data
    model, optimizer, module = build(variant, lr, seed)
    pretrained = fresh_model(SETUP, seed).get_submodule(TARGET).weight.detach()
    model.train()
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    curve = []
    started = time.perf_counter()
    for step, start in enumerate(range(0, len(order), SETUP.batch)):
        index = order[start : start + SETUP.batch]
        optimizer.zero_grad()
        logits = model(prepare(SETUP, x_train[index]))
        F.cross_entropy(logits, y_train[index]).backward()
        optimizer.step()
        if step % CURVE_EVERY == 0 and module is not None:
            curve.append([step + 1, float(update(module).norm())])
    seconds = time.perf_counter() - started
    delta = None if module is None else update(module)
    sigma = [] if delta is None else torch.linalg.svdvals(delta)[:SIGMAS].tolist()
    row = {
        "variant": variant,
        "lr": lr,
        "seed": seed,
        "accuracy": accuracy(SETUP, model, x_test, y_test),
        "validation_accuracy": (
            accuracy(SETUP, model, *validation) if validation is not None else None
        ),
        "update_norm": None if delta is None else float(delta.norm()),
        "update_norm_probe": (
            None if delta is None else float(probed_update(module, pretrained).norm())
        ),
        "update_sigma": sigma,
        "update_norm_curve": curve,
        "adapter_ranks": list(module.rank) if isinstance(module, TuckerLayer) else None,
        "seconds": seconds,
    }
    top = ", ".join(f"{s:.3g}" for s in row["update_sigma"][:5])
    print(
        f"{variant} lr {lr:g}: test {row['accuracy']:.4f}"
        + (
            f" (validation {row['validation_accuracy']:.4f})"
            if validation is not None
            else ""
        )
        + (f", ||dW|| {row['update_norm']:.3g}, sigma [{top}]" if sigma else "")
        + f", {seconds:.0f} s",
        flush=True,
    )
    return row


def best(runs: list[dict], variant: str) -> dict:
    """The variant's run of best validation accuracy (test accuracy without one)."""
    key = "validation_accuracy" if runs[0]["validation_accuracy"] else "accuracy"
    return max((r for r in runs if r["variant"] == variant), key=lambda r: r[key])


def reusable(name: str, folder, protocol: dict) -> dict:
    """``{(variant, lr): run}`` of the existing result file ``name`` if it was
    measured with ``protocol``, else empty."""
    path = pathlib.Path(folder) if folder else RESULTS
    path = path / f"{name}.json"
    if not path.exists():
        return {}
    payload = json.loads(path.read_text())
    if any(payload.get(key) != value for key, value in protocol.items()):
        return {}
    return {(r["variant"], r["lr"]): r for r in payload["runs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the runs of the existing result"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants or list(QUICK_VARIANTS if args.quick else VARIANTS)
    try:
        arrays = load_fashion_mnist()
    except MissingDataError as error:
        raise SystemExit(f"conv_adapters_diagnosis.py: {error}") from None
    train, test = (384, 500) if args.quick else (None, None)
    data = split_data(arrays, train, test, 0, True, args.quick)
    name = "conv_adapters_diagnosis" + ("_quick" if args.quick else "")
    (x_train, _), (x_test, _), validation = data
    protocol = {
        "model": SETUP.name,
        "target": TARGET,
        "epochs": 1,
        "batch": SETUP.batch,
        "seed": 0,
        "train_size": len(x_train),
        "validation_size": len(validation[0]),
        "test_size": len(x_test),
    }
    plan = [
        (variant, lr)
        for variant in variants
        for lr in (
            (QUICK_LR["sgd" if "-sgd" in variant else "adam"],)
            if args.quick
            else grid(variant)
        )
    ]
    stored = reusable(name, args.out, protocol) if args.reuse else {}
    reused = sum(key in stored for key in plan)
    if reused:
        print(f"reusing {reused} finished run(s)")
    runs = [stored.get(key) or run(*key, data) for key in plan]
    for row in runs:
        row["top_sigma"] = " ".join(f"{s:.3g}" for s in row["update_sigma"][:5])
    print(
        table(
            runs,
            [
                ("variant", "variant", "s"),
                ("lr", "lr", "g"),
                ("accuracy", "test acc", ".4f"),
                ("validation_accuracy", "val acc", ".4f"),
                ("update_norm", "||dW||", ".3g"),
                ("top_sigma", "sigma_1..5 of dW", "s"),
            ],
        )
    )
    for row in runs:
        del row["top_sigma"]
    pretrained = fresh_model(SETUP, 0).get_submodule(TARGET).weight.detach()
    payload = {
        **protocol,
        "grids": {v: list(grid(v)) for v in variants},
        "lora_budget": lora_budget(),
        "head_lr": HEAD_LR,
        "pretrained_norm": float(pretrained.norm()),
        "pretrained_sigma": torch.linalg.svdvals(pretrained)[:SIGMAS].tolist(),
        "selection": "best validation accuracy per variant",
        "runs": runs,
        "rows": [best(runs, v) for v in variants],
    }
    print(f"saved {save(name, payload, args.out)}")


if __name__ == "__main__":
    main()
