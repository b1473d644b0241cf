"""Checkpoints: ranks travel with the state_dict, resuming equals training straight
through, a checkpoint of another architecture is refused, and a process killed
mid-save never leaves a broken checkpoint."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TuckerConv2d,
    TuckerLinear,
    load_checkpoint,
    save_checkpoint,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]

# the model, data stream and training loop shared by this process and the child
TRAINING = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from tuckerflow.nn import TDLRT, TuckerLinear

    torch.set_num_threads(1)

    def build(rank=4):
        torch.manual_seed(0)
        return nn.Sequential(
            TuckerLinear(64, 256, rank=rank, max_rank=48, dtype=torch.float64),
            nn.Tanh(),
            TuckerLinear(256, 64, rank=rank, max_rank=48, dtype=torch.float64),
        )

    def optimizer_for(model):
        return TDLRT(model.parameters(), lr=0.2, tol=0.002, momentum=0.9)

    def batch(step):
        generator = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(32, 64, generator=generator, dtype=torch.float64)
        return x, torch.sin(3 * x)

    def train(model, optimizer, start, stop):
        for step in range(start, stop):
            x, y = batch(step)
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()
    """
)
namespace: dict = {}
exec(TRAINING, namespace)
build, optimizer_for, train = (
    namespace["build"],
    namespace["optimizer_for"],
    namespace["train"],
)


def _weights(model):
    return [m.weight.detach().clone() for m in model if isinstance(m, TuckerLinear)]


def test_state_dict_carries_the_ranks_into_a_fresh_model():
    model = build()
    optimizer = optimizer_for(model)
    train(model, optimizer, 0, 8)
    ranks = [model[0].rank, model[2].rank]
    assert ranks != [(4, 4), (4, 4)], "the ranks should have changed"
    fresh = build(rank=2)
    fresh.load_state_dict(model.state_dict())
    assert [fresh[0].rank, fresh[2].rank] == ranks
    for a, b in zip(_weights(fresh), _weights(model)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert fresh[0].max_rank == model[0].max_rank
    fresh_optimizer = optimizer_for(fresh)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    state = fresh_optimizer.state[fresh[0].core]["tucker_state"]
    assert tuple(state["core"].shape) == fresh[0].rank


def test_resuming_from_a_checkpoint_equals_training_straight_through(tmp_path):
    straight = build()
    train(straight, optimizer_for(straight), 0, 12)

    model = build()
    optimizer = optimizer_for(model)
    train(model, optimizer, 0, 5)
    save_checkpoint(tmp_path / "run.pt", model, optimizer, step=5)
    resumed = build(rank=3)
    resumed_optimizer = optimizer_for(resumed)
    extra = load_checkpoint(tmp_path / "run.pt", resumed, resumed_optimizer)
    assert extra == {"step": 5}
    train(resumed, resumed_optimizer, 5, 12)
    for a, b in zip(_weights(resumed), _weights(straight)):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    model = build()
    save_checkpoint(tmp_path / "run.pt", model)
    other = nn.Sequential(
        TuckerLinear(64, 128, rank=4, dtype=torch.float64),
        nn.Tanh(),
        TuckerLinear(128, 64, rank=4, dtype=torch.float64),
    )
    with pytest.raises(
        ValueError,
        match=r"0\.factors\.0: checkpoint factor has shape \(256, \d+\) but this "
        r"layer's mode 0 has size 128",
    ):
        load_checkpoint(tmp_path / "run.pt", other)
    conv = TuckerConv2d(4, 4, 3)
    state = {
        "core": torch.zeros(2, 2),
        "factors.0": torch.zeros(4, 2),
        "factors.1": torch.zeros(4, 2),
    }
    with pytest.raises(
        ValueError, match="checkpoint core has 2 modes but this TuckerConv2d has 4"
    ):
        conv.load_state_dict(state)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own unpickling error
        load_checkpoint(tmp_path / "junk.pt", model)


CHILD = TRAINING + textwrap.dedent(
    """
    import sys
    from tuckerflow.nn import save_checkpoint
    path = sys.argv[1]
    model = build()
    optimizer = optimizer_for(model)
    step = 0
    print("ready", flush=True)
    while True:
        train(model, optimizer, step, step + 1)
        step += 1
        save_checkpoint(path, model, optimizer, step=step)
    """
)


def test_a_process_killed_mid_save_keeps_its_last_good_checkpoint(tmp_path):
    path = tmp_path / "live.pt"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(0)
    last_step = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.2, 0.8))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        # whatever moment the kill hit, the file is a complete checkpoint
        model = build()
        optimizer = optimizer_for(model)
        extra = load_checkpoint(path, model, optimizer)
        assert extra["step"] >= 1
        last_step = extra["step"]
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".live.pt.")]
        for leftover in leftovers:  # a killed save may leave its temporary file
            leftover.unlink()
    # resuming the last checkpoint matches training straight through
    model = build()
    optimizer = optimizer_for(model)
    load_checkpoint(path, model, optimizer)
    train(model, optimizer, last_step, last_step + 3)
    straight = build()
    train(straight, optimizer_for(straight), 0, last_step + 3)
    for a, b in zip(_weights(model), _weights(straight)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
