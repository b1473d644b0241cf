"""Study 7: conv adapters on a pretrained CNN, MNIST -> Fashion-MNIST.

Model: the pretrained ``ccexam`` MNIST CNN
(``tuckerflow.nn.models.pretrained_mnist_cnn``: Conv 1->32, Conv 32->64, Linear
3136->128, Linear 128->10), its last Linear replaced by a fresh 10-way head (seeded),
trainable in every variant. Data: Fashion-MNIST
(``tuckerflow.datasets.load_fashion_mnist``), normalised with the MNIST mean and std
the pretrained network expects. Adapters go on ``features``' two convs and the hidden
Linear (``features.0``, ``features.3``, ``classifier.0``).

Compared, all with one epoch at batch 128 and seed 0:

* ``head``: only the fresh head trains (AdamW, lr 1e-3);
* ``lora-r{2,4,8}``: PEFT LoRA (``LoraConfig(r, lora_alpha=2r)``) on the three
  targets, the convs flattened by PEFT (A: a k x k conv to r channels, B: a 1 x 1
  conv), head trainable (AdamW, lr 1e-3);
* ``tucker-tol``: our Tucker adapters (``add_tucker_adapters``, initial rank 4, at
  most 8; the conv kernel keeps its 4-mode structure) trained by TDLRT with Adam
  (lr 1e-3, tol 0.1), head trainable;
* ``tucker-budget``: the same adapters under a global TDLRT budget equal to LoRA
  r = 4's adapter parameters;
* ``full``: full fine-tuning (Adam, lr 1e-4).

Reported per run: test accuracy, trainable parameters (adapter + head; for the Tucker
adapters the count after training, since their ranks adapt), the median wall time of
a training step and its ratio to LoRA r = 4's. Plot: accuracy against trainable
parameters (log x).

Run: ``python benchmarks/conv_adapters.py [--quick] [--variants ...] [--train N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from transformer_adapters import adapter_parameters, trainable

TARGETS = ("features.0", "features.3", "classifier.0")
HEAD = "classifier.2"
VARIANTS = (
    "head",
    "lora-r2",
    "lora-r4",
    "lora-r8",
    "tucker-tol",
    "tucker-budget",
    "full",
)


def fresh_model(seed: int):
    import torch

    from tuckerflow.nn.models import pretrained_mnist_cnn

    model = pretrained_mnist_cnn()
    torch.manual_seed(seed)
    model.classifier[2] = torch.nn.Linear(128, 10)
    return model


def lora_model(model, rank: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(TARGETS),
        modules_to_save=[HEAD],
    )
    return get_peft_model(model, config)


def lora_adapter_parameters(seed: int, rank: int) -> int:
    """LoRA's A and B parameters at ``rank`` on the three targets (counted in PEFT)."""
    model = lora_model(fresh_model(seed), rank)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def build(variant: str, seed: int):
    import torch

    model = fresh_model(seed)
    head = model.classifier[2]
    if variant == "full":
        model.train()
        return model, torch.optim.Adam(model.parameters(), lr=1e-4), None
    if variant == "head":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        return model, torch.optim.AdamW(head.parameters(), lr=1e-3), None
    if variant.startswith("lora-r"):
        model = lora_model(model, int(variant[len("lora-r") :]))
        params = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.AdamW(params, lr=1e-3), None
    from tuckerflow.nn import TDLRT, add_tucker_adapters

    if variant == "tucker-tol":
        rule = {"tol": 0.1}
    elif variant == "tucker-budget":
        rule = {"budget": lora_adapter_parameters(seed, 4)}
    else:
        raise ValueError(variant)
    torch.manual_seed(seed)
    add_tucker_adapters(model, list(TARGETS), rank=4, max_rank=8, verbose=False)
    for p in head.parameters():
        p.requires_grad_(True)
    optimizer = TDLRT(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, adam=True, **rule
    )
    return model, optimizer, rule


def run(variant: str, data, args) -> dict:
    import torch
    import torch.nn.functional as F

    (x_train, y_train), (x_test, y_test) = data
    model, optimizer, rule = build(variant, args.seed)
    model.train()
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(x_train), generator=generator)
    steps = []
    started = time.perf_counter()
    for start in range(0, len(order), args.batch):
        index = order[start : start + args.batch]
        tick = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(x_train[index]), y_train[index]).backward()
        optimizer.step()
        steps.append(time.perf_counter() - tick)
    seconds = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x_test), 1000):
            logits = model(x_test[start : start + 1000])
            correct += int((logits.argmax(1) == y_test[start : start + 1000]).sum())
    ranks = {
        name: list(m.rank)
        for name, m in model.named_modules()
        if hasattr(m, "core") and hasattr(m, "rank")
    }
    row = {
        "variant": variant,
        "accuracy": correct / len(x_test),
        "trainable_parameters": trainable(model),
        "adapter_parameters": adapter_parameters(model),
        "adapter_budget": (rule or {}).get("budget"),
        "median_step_ms": 1e3 * statistics.median(steps),
        "seconds": seconds,
        "adapter_ranks": ranks,
    }
    print(
        f"{variant}: accuracy {row['accuracy']:.4f}, trainable "
        f"{row['trainable_parameters']:,}, step {row['median_step_ms']:.1f} ms",
        flush=True,
    )
    return row


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        family = row["variant"].split("-")[0]
        marker = {"head": "s", "lora": "o", "tucker": "^", "full": "D"}[family]
        ax.scatter(row["trainable_parameters"], 100 * row["accuracy"], marker=marker)
        ax.annotate(
            row["variant"],
            (row["trainable_parameters"], 100 * row["accuracy"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (adapters + head)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("ccexam MNIST CNN -> Fashion-MNIST, 1 epoch")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    import torch
    from _common import save, table

    from tuckerflow.datasets import MissingDataError, load_fashion_mnist
    from tuckerflow.nn.models import MNIST_MEAN, MNIST_STD

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train", type=int, default=None, help="training subsample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.train is None and args.quick:
        args.train = 384
    try:
        data = load_fashion_mnist()
    except MissingDataError as error:  # the install command, not a traceback
        raise SystemExit(f"conv_adapters.py: {error}") from None
    x_train, y_train = (torch.from_numpy(a) for a in data["train"])
    x_test, y_test = (torch.from_numpy(a) for a in data["test"])
    full_train = len(x_train)
    if args.train is not None and args.train < len(x_train):
        keep = torch.randperm(
            len(x_train), generator=torch.Generator().manual_seed(args.seed)
        )[: args.train]
        x_train, y_train = x_train[keep], y_train[keep]
    if args.quick:
        x_test, y_test = x_test[:500], y_test[:500]
    x_train = (x_train - MNIST_MEAN) / MNIST_STD
    x_test = (x_test - MNIST_MEAN) / MNIST_STD
    data = ((x_train, y_train), (x_test, y_test))
    rows = [run(variant, data, args) for variant in args.variants]
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
                ("accuracy", "test acc", ".4f"),
                ("trainable_parameters", "trainable", ","),
                ("adapter_parameters", "adapters", ","),
                ("median_step_ms", "step ms", ".1f"),
                ("step_vs_lora", "x LoRA r4", ".2f"),
            ],
        )
    )
    name = "conv_adapters_quick" if args.quick else "conv_adapters"
    path = save(
        name,
        {
            "epochs": 1,
            "batch": args.batch,
            "seed": args.seed,
            "train_size": len(x_train),
            "train_subsampled": len(x_train) < full_train,
            "test_size": len(x_test),
            "normalisation": "MNIST mean/std (0.1307, 0.3081)",
            "optimizers": {
                "head, lora": "AdamW lr 1e-3",
                "tucker": "TDLRT adam=True lr 1e-3",
                "full": "Adam lr 1e-4",
            },
            "rows": rows,
        },
        args.out,
    )
    plot(rows, path.with_suffix(".png"))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
