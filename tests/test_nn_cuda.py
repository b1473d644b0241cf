"""The nn adapter on a CUDA device: layers, the TDLRT optimizer and checkpoints keep
every tensor on the GPU and compute what the CPU computes.

Skipped (with the reason) where no CUDA device is visible. The comparison runs in
float64: CPU and GPU differ only by rounding (other reduction orders, cuSOLVER instead
of LAPACK), and each step's QR/SVD is backward stable, so after a few steps the
represented weights agree to O(steps * eps * ||W|| / gap), far below the 1e-9 relative
tolerance used here for the random, well-separated spectra of these problems.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerConv2d,
    TuckerLinear,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device is visible to torch"
)

CUDA = torch.device("cuda")


def _model(implementation: str, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        TuckerConv2d(
            3,
            8,
            3,
            padding=1,
            rank=(2, 2, 2, 2),
            max_rank=(8, 3, 3, 3),
            implementation=implementation,
            dtype=dtype,
        ),
        nn.ReLU(),
        nn.Flatten(),
        TuckerLinear(8 * 6 * 6, 10, rank=2, max_rank=10, dtype=dtype),
    )


def _batch(dtype=torch.float64):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 6, 6, generator=generator, dtype=dtype)
    y = torch.randint(0, 10, (16,), generator=generator)
    return x, y


def _train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _weights(model):
    return [m.weight.detach().cpu() for m in model if hasattr(m, "rank")]


def _ranks(model):
    return [m.rank for m in model if hasattr(m, "rank")]


def _assert_same_weights(cpu_model, gpu_model):
    """Represented weights equal within 1e-9 ||W|| (see the module docstring)."""
    for cpu_weight, gpu_weight in zip(_weights(cpu_model), _weights(gpu_model)):
        scale = float(cpu_weight.norm())
        torch.testing.assert_close(gpu_weight, cpu_weight, atol=1e-9 * scale, rtol=0)


def _assert_all_on(model, optimizer, device):
    for name, parameter in model.named_parameters():
        assert parameter.device.type == device.type, name
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                assert value.device.type == device.type, key


OPTIONS = [
    pytest.param({"tol": 0.01}, id="tol"),
    pytest.param({"tol": 0.01, "momentum": 0.9}, id="momentum"),
    pytest.param({"tol": 0.01, "adam": True}, id="adam"),
    pytest.param({"budget": 600}, id="budget"),
]


@pytest.mark.parametrize("implementation", ["dense", "factorized"])
@pytest.mark.parametrize("options", OPTIONS)
def test_cuda_training_matches_cpu_and_stays_on_the_gpu(implementation, options):
    cpu_model = _model(implementation)
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    x, y = _batch()
    lr = 1e-2 if options.get("adam") else 0.2
    cpu_optimizer = TDLRT(cpu_model, lr=lr, **options)
    gpu_optimizer = TDLRT(gpu_model, lr=lr, **options)
    start = _ranks(cpu_model)
    _train(cpu_model, cpu_optimizer, x, y, 4)
    _train(gpu_model, gpu_optimizer, x.to(CUDA), y.to(CUDA), 4)
    assert _ranks(gpu_model) == _ranks(cpu_model)
    assert _ranks(cpu_model) != start  # the comparison covers a rank change
    _assert_all_on(gpu_model, gpu_optimizer, CUDA)
    _assert_same_weights(cpu_model, gpu_model)


def test_float32_training_on_the_gpu_follows_the_cpu_run():
    # float32: rounding differences of O(eps32 = 1.2e-7) grow over 10 steps through
    # the QR/SVD conditioning; 1e-3 relative on the loss leaves room for a factor 1e4
    cpu_model = _model("factorized", torch.float32)
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    x, y = _batch(torch.float32)
    losses = []
    for model, device in ((cpu_model, torch.device("cpu")), (gpu_model, CUDA)):
        optimizer = TDLRT(model, lr=0.2, tol=0.05)
        xd, yd = x.to(device), y.to(device)
        with torch.no_grad():
            before = float(F.cross_entropy(model(xd), yd))
        _train(model, optimizer, xd, yd, 10)
        with torch.no_grad():
            losses.append(float(F.cross_entropy(model(xd), yd)))
        assert losses[-1] < before
        _assert_all_on(model, optimizer, device)
    assert _ranks(gpu_model) == _ranks(cpu_model)
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path):
    x, y = _batch()
    gpu_model = _model("dense").to(CUDA)
    gpu_optimizer = TDLRT(gpu_model, lr=0.2, tol=0.01, momentum=0.9)
    _train(gpu_model, gpu_optimizer, x.to(CUDA), y.to(CUDA), 3)
    path = save_checkpoint(tmp_path / "gpu.pt", gpu_model, gpu_optimizer, step=3)
    cpu_model = _model("dense")  # fresh ranks: the checkpoint's ranks must win
    cpu_optimizer = TDLRT(cpu_model, lr=0.2, tol=0.01, momentum=0.9)
    extra = load_checkpoint(
        path, cpu_model, cpu_optimizer, restore_rng=False, map_location="cpu"
    )
    assert extra["step"] == 3
    assert _ranks(cpu_model) == _ranks(gpu_model)
    _assert_all_on(cpu_model, cpu_optimizer, torch.device("cpu"))
    _train(gpu_model, gpu_optimizer, x.to(CUDA), y.to(CUDA), 2)
    _train(cpu_model, cpu_optimizer, x, y, 2)
    assert _ranks(cpu_model) == _ranks(gpu_model)
    _assert_same_weights(cpu_model, gpu_model)
