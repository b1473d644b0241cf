"""Data-parallel training with ``torch.distributed`` and ``DistributedDataParallel``.

Design: Tucker layers change shape during training, and DDP's gradient buckets are
built once for fixed shapes. So DDP keeps averaging the *ordinary* parameters, while
the Tucker parameters are excluded from it (:func:`prepare_ddp`) and handled by the
:class:`~tuckerflow.nn.TDLRT` optimizer itself: it averages their gradients with one
all-reduce per step, worker 0 decides every new rank and broadcasts it, and worker 0's
new weights and optimizer state are broadcast (a few kilobytes for compressed layers),
so all workers always hold bit-identical ranks and weights.

Usage (launched with ``torchrun --nproc_per_node=N train.py``)::

    torch.distributed.init_process_group("gloo")      # "nccl" on GPUs
    model = tuckerize(LeNet5(), init="random")
    model = DistributedDataParallel(prepare_ddp(model))
    optimizer = TDLRT(model, lr=0.05, momentum=0.9)   # detects the process group
"""

from __future__ import annotations

from torch import nn

from .layers import TuckerLayer

__all__ = ["prepare_ddp"]


def prepare_ddp(model: nn.Module) -> nn.Module:
    """Mark the Tucker parameters of ``model`` for DDP to ignore.

    That is every ``core``, ``factors.i`` and ``weight_delta`` (the latter whether or
    not the TDLRT optimizer has created it yet). Call it before wrapping the model in
    DDP. The TDLRT optimizer averages and synchronizes those parameters itself; DDP
    handles everything else as usual.

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, TuckerLayer):
            for name, _ in module.named_parameters(recurse=False):
                if name != "bias":
                    names.append(f"{prefix}.{name}" if prefix else name)
            for index in range(len(module.factors)):
                names.append(
                    f"{prefix}.factors.{index}" if prefix else f"factors.{index}"
                )
            # created by TDLRT, possibly after this call: its gradient is dL/dW,
            # which TDLRT averages itself
            names.append(f"{prefix}.weight_delta" if prefix else "weight_delta")
    existing = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    model._ddp_params_and_buffers_to_ignore = sorted(set(existing + names))
    return model
