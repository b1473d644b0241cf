"""Data-parallel TDLRT on torch.distributed (gloo, 2 processes on the CPU).

After N steps every worker holds the same ranks and weights (bit for bit), equal to a
single process trained on the same global batches (float64, to 1e-10: the all-reduce
sums in another order), and a checkpoint written by worker 0 resumes in one process.
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
    import os, sys
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
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
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
