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

Without :func:`prepare_ddp`: ``TDLRT(model, ...)`` created *before* the model is
wrapped (the order of ``accelerate`` and the Hugging Face ``Trainer``) applies it to
``model`` itself when a process group of several workers is initialized, so
``DistributedDataParallel(model)`` afterwards just works. A model wrapped *before*
the optimizer is created cannot be repaired (DDP has fixed its buckets): ``TDLRT``
given the wrapper refuses at construction, and otherwise the first forward pass of a
Tucker layer inside that DDP raises, both naming :func:`prepare_ddp` (instead of
DDP's later message about parameters that did not receive gradients).
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

    Parameters
    ----------
    model : nn.Module
        The unwrapped model (possibly a Tucker layer itself); its
        ``_ddp_params_and_buffers_to_ignore`` list is extended, earlier entries are
        kept. Calling it twice is harmless.

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, TuckerLayer):
            local = [
                name
                for name, _ in module.named_parameters(recurse=False)
                if name != "bias"
            ]
            local += [f"factors.{index}" for index in range(len(module.factors))]
            # created by TDLRT, possibly after this call: its gradient is dL/dW,
            # which TDLRT averages itself
            local.append("weight_delta")
            for name in local:
                if prefix:
                    names.append(f"{prefix}.{name}")
                else:
                    # the model itself is the Tucker layer: DDP's parameter list
                    # calls it "core", its reducer ".core" (module name + "." + name)
                    names += [name, f".{name}"]
    existing = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    model._ddp_params_and_buffers_to_ignore = sorted(set(existing + names))
    return model
