"""The training loop shared by the network studies (one implementation, seeded)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _baselines import weight_count
from torch import nn

from tuckerflow.nn import TuckerLayer, compression_report


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 2000):
            logits = model(images[start : start + 2000])
            correct += int((logits.argmax(1) == labels[start : start + 2000]).sum())
    model.train()
    return correct / len(images)


def tucker_ranks(model: nn.Module) -> dict[str, list[int]]:
    return {
        name: list(module.rank)
        for name, module in model.named_modules()
        if isinstance(module, TuckerLayer)
    }


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    epochs: int,
    batch: int,
    seed: int,
    scheduler: Any = None,
    limit: int | None = None,
    cosine: bool = False,
    progress: bool = False,
    label: str = "",
) -> dict[str, Any]:
    """Train with cross-entropy; record test accuracy, ranks and sizes every epoch.

    ``cosine``: every learning rate of ``optimizer.param_groups`` decays from its
    value at the start to 0 along a half cosine over all the run's steps, set before
    each step (Loshchilov and Hutter, "SGDR", ICLR 2017, without restarts); the
    final iterate then does not carry a large step's noise (short runs).
    """
    images, labels = (torch.from_numpy(a) for a in data["train"])
    test_images, test_labels = (torch.from_numpy(a) for a in data["test"])
    if limit:
        images, labels = images[:limit], labels[:limit]
        test_images, test_labels = test_images[: limit // 2], test_labels[: limit // 2]
    generator = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs * ((len(images) + batch - 1) // batch), desc=label)
        except ImportError:  # pragma: no cover
            bar = None
    history: dict[str, Any] = {"epochs": []}
    step_times = []
    total = epochs * ((len(images) + batch - 1) // batch)
    if cosine:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    taken = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        started = time.perf_counter()
        for start in range(0, len(images), batch):
            index = order[start : start + batch]
            tick = time.perf_counter()
            if cosine:
                factor = 0.5 * (1 + math.cos(math.pi * taken / total))
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
            taken += 1
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images[index]), labels[index])
            loss.backward()
            optimizer.step()
            step_times.append(time.perf_counter() - tick)
            if bar is not None:
                bar.update(1)
        if scheduler is not None:
            scheduler.step()
        report = compression_report(model)
        history["epochs"].append(
            {
                "epoch": epoch,
                "test_accuracy": accuracy(model, test_images, test_labels),
                "loss": float(loss.item()),
                "ranks": tucker_ranks(model),
                "weights": weight_count(model),
                "tucker_weights": report.compressed,
                "seconds": time.perf_counter() - started,
            }
        )
    if bar is not None:
        bar.close()
    history["final_accuracy"] = history["epochs"][-1]["test_accuracy"]
    history["weights"] = history["epochs"][-1]["weights"]
    history["median_step_ms"] = 1e3 * float(np.median(step_times))
    return history
