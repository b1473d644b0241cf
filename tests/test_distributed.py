"""Data-parallel TDLRT on torch.distributed (gloo, 2 processes on the CPU).

After N steps every worker holds the same ranks and weights (bit for bit), equal to a
single process trained on the same global batches (float64, to 1e-10: the all-reduce
sums in another order), and a checkpoint written by worker 0 resumes in one process.
Without prepare_ddp, DDP either just works (the optimizer created first prepares the
model) or is refused with a message naming prepare_ddp.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[1]

COMMON = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from tuckerflow.nn import TDLRT, TuckerConv2d, TuckerLinear

    torch.set_num_threads(1)
    STEPS, CHECKPOINT_STEP, GLOBAL_BATCH = 6, 3, 32

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            TuckerConv2d(3, 12, 3, padding=1, rank=(4, 3, 3, 3), dtype=torch.float64),
            nn.ReLU(),
            nn.Flatten(),
            TuckerLinear(12 * 25, 16, rank=6, dtype=torch.float64),
            nn.ReLU(),
            nn.Linear(16, 4, dtype=torch.float64),
        )

    def global_batch(step):
        generator = torch.Generator().manual_seed(100 + step)
        x = torch.randn(GLOBAL_BATCH, 3, 5, 5, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 4, (GLOBAL_BATCH,), generator=generator)
        return x, y

    def make_optimizer(model):
        return TDLRT(model, lr=0.3, momentum=0.9, tol=0.02)
    """
)

WORKER = COMMON + textwrap.dedent(
    """
    import gc, os, sys
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from tuckerflow.nn import prepare_ddp, save_checkpoint

    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build()
    ddp = DistributedDataParallel(prepare_ddp(model))
    optimizer = make_optimizer(model)
    assert optimizer._distributed
    for step in range(STEPS):
        x, y = global_batch(step)
        share = GLOBAL_BATCH // world
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        optimizer.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
        if step + 1 == CHECKPOINT_STEP and rank == 0:
            save_checkpoint(f"{out}/checkpoint.pt", model, optimizer, step=step + 1)
    torch.save(model.state_dict(), f"{out}/worker{rank}.pt")
    # DDP before the process group: a DDP left for interpreter exit outlives its
    # group, and its teardown aborts the process now and then
    # ("terminate called without an active exception", after all files are written)
    del ddp
    gc.collect()
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_two_workers(script_text, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(script_text)
    port = _free_port()
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()[-3000:]


def _single_process(start_step=0, model=None, optimizer=None):
    namespace: dict = {}
    exec(COMMON, namespace)
    if model is None:
        model = namespace["build"]()
        optimizer = namespace["make_optimizer"](model)
    for step in range(start_step, namespace["STEPS"]):
        x, y = namespace["global_batch"](step)
        optimizer.zero_grad()
        namespace["F"].cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, namespace


def test_two_workers_stay_identical_and_match_one_process(tmp_path):
    _run_two_workers(WORKER, tmp_path)
    states = [
        torch.load(tmp_path / f"worker{r}.pt", weights_only=True) for r in range(2)
    ]
    for key, value in states[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, states[1][key]), key  # bit-identical workers
    reference, namespace = _single_process()
    expected = reference.state_dict()
    ranks = [tuple(states[0]["0.core"].shape), tuple(states[0]["3.core"].shape)]
    assert ranks == [tuple(reference[0].core.shape), tuple(reference[3].core.shape)]
    assert ranks[1] != (6, 6), "the run should have changed a rank (DDP + new shapes)"
    for key, value in expected.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(states[0][key], value, atol=1e-10, rtol=0)

    # a checkpoint written by worker 0 resumes in a single process
    from tuckerflow.nn import load_checkpoint

    model = namespace["build"]()
    optimizer = namespace["make_optimizer"](model)
    extra = load_checkpoint(tmp_path / "checkpoint.pt", model, optimizer)
    resumed, _ = _single_process(extra["step"], model, optimizer)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(
                resumed.state_dict()[key], value, atol=1e-10, rtol=0
            )


# ------------------- issue 13 item 13: DistributedDataParallel without prepare_ddp
PLAIN_DDP = textwrap.dedent(
    """
    import gc, sys
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from tuckerflow.nn import TDLRT, TuckerLinear, prepare_ddp

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            TuckerLinear(8, 6, rank=2, dtype=torch.float64), nn.Tanh(),
            nn.Linear(6, 2, dtype=torch.float64),
        )

    def train(module, optimizer, steps=4):
        for step in range(steps):
            generator = torch.Generator().manual_seed(10 * step + rank)
            x = torch.randn(8, 8, generator=generator, dtype=torch.float64)
            y = torch.randn(8, 2, generator=generator, dtype=torch.float64)
            optimizer.zero_grad()
            F.mse_loss(module(x), y).backward()
            optimizer.step()

    def outcome(run):
        try:
            run()
        except (RuntimeError, ValueError) as error:
            return f"{type(error).__name__}: {error}"
        return "ok"

    results = {}

    def wrapped_first_optimizer_on_the_wrapper():
        model = build()
        ddp = DistributedDataParallel(model)
        TDLRT(ddp, lr=0.1)

    def wrapped_first_optimizer_on_the_parameters():
        model = build()
        ddp = DistributedDataParallel(model)
        train(ddp, TDLRT(model.parameters(), lr=0.1))

    def optimizer_first():  # the order of accelerate and the HF Trainer
        model = build()
        optimizer = TDLRT(model, lr=0.3, tol=1e-3)
        ddp = DistributedDataParallel(model)
        train(ddp, optimizer)
        assert model[0].rank != (2, 2), model[0].rank  # shapes changed under DDP
        torch.save(model.state_dict(), f"{sys.argv[1]}/optimizer_first{rank}.pt")

    def prepared_root_layer():  # DDP's reducer names the root's parameters ".core"
        torch.manual_seed(0)
        layer = TuckerLinear(8, 2, rank=1, dtype=torch.float64)
        ddp = DistributedDataParallel(prepare_ddp(layer))
        train(ddp, TDLRT(layer, lr=0.3, tol=1e-3))
        assert layer.rank != (1, 1), layer.rank
        torch.save(layer.state_dict(), f"{sys.argv[1]}/root{rank}.pt")

    for run in (
        wrapped_first_optimizer_on_the_wrapper,
        wrapped_first_optimizer_on_the_parameters,
        optimizer_first,
        prepared_root_layer,
    ):
        results[run.__name__] = outcome(run)
    torch.save(results, f"{sys.argv[1]}/results{rank}.pt")
    gc.collect()  # every DDP before the process group (see WORKER)
    dist.destroy_process_group()
    """
)


def test_plain_ddp_is_refused_naming_prepare_ddp_or_works(tmp_path):
    """A model wrapped in DDP before the optimizer exists is refused with a message
    naming prepare_ddp (at TDLRT construction when TDLRT is given the wrapper, else
    at the first forward; before, DDP failed on the second iteration with its message
    about parameters that did not receive gradients). Created before the wrapping,
    TDLRT(model) prepares the model itself, and DDP(model) trains with rank changes;
    prepare_ddp also covers a Tucker layer that is the wrapped model itself."""
    _run_two_workers(PLAIN_DDP, tmp_path)
    results = [
        torch.load(tmp_path / f"results{r}.pt", weights_only=True) for r in range(2)
    ]
    assert results[0] == results[1]
    outcome = results[0]
    assert outcome["wrapped_first_optimizer_on_the_wrapper"].startswith(
        "ValueError: TDLRT: the DistributedDataParallel 'model' reduces the core and "
        "factors of the Tucker layer 'module.0': it was built without prepare_ddp"
    )
    message = outcome["wrapped_first_optimizer_on_the_parameters"]
    assert message.startswith("RuntimeError: TuckerLinear (weight shape (6, 8))")
    assert "prepare_ddp(model) before wrapping" in message
    assert outcome["optimizer_first"] == "ok"
    assert outcome["prepared_root_layer"] == "ok"
    for name in ("optimizer_first", "root"):
        states = [
            torch.load(tmp_path / f"{name}{r}.pt", weights_only=True) for r in range(2)
        ]
        for key, value in states[0].items():
            assert torch.equal(value, states[1][key]), (name, key)
