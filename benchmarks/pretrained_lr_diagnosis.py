"""Study 2a diagnosis: what one TDLRT step and one vanilla step do at the same ``lr``.

The pretrained ccexam CNN is tuckerized under a global budget (5% of the tuckerized
weights kept by default), then ONE mini-batch (128 images, the first of the seed-0
epoch order) gives one step of each method at the same ``lr`` (no momentum: the first
momentum step equals it). Per Tucker layer it reports

* the singular values of the core unfoldings (the ``S_i`` of the K-steps);
* ``||W1 - W0||`` for dense SGD (``lr ||G||``), TDLRT before truncation, TDLRT after
  the budget truncation, and vanilla factor SGD;
* the largest principal angle between the old and new factor subspaces;
* the energy of the new directions in the augmented core (the rows of
  ``unfold(Chat1, i)`` outside the old basis) against the smallest singular value
  the budget keeps and the tail it discards;
* the predicted amplification of a vanilla factor step. With
  ``unfold(C, i)^T = Q_i S_i^T`` and ``V_i = (kron_{j != i} U_j) Q_i``,
  ``dL/dU_i = G_(i) V_i S_i^T``, so the factor step moves the weight by
  ``-lr G_(i) V_i S_i^T S_i V_i^T``: the component of the gradient along the k-th
  direction of the core is scaled by ``sigma_k^2``. TDLRT's K-step moves it by
  ``-lr G_(i) V_i V_i^T`` (factor 1, like dense SGD). The ratio
  ``||G_(i) V_i S_i^T S_i|| / ||G_(i) V_i||`` is the gradient-weighted ``sigma^2``.

Run: ``python benchmarks/pretrained_lr_diagnosis.py [--kept 0.05] [--lr 0.01]``
(seconds; writes benchmarks/results/pretrained/lr_diagnosis.json with ``--save``).
"""

from __future__ import annotations

import argparse
import copy
import math

import tensorly as tl
import torch
import torch.nn.functional as F
from _common import RESULTS, save

import tuckerflow as tf
from tuckerflow.datasets import MissingDataError, load_mnist
from tuckerflow.integrators.tdlrt import tdlrt_augment_unchecked
from tuckerflow.nn import TDLRT, TuckerLayer, tuckerize
from tuckerflow.nn.layers import reconstruct
from tuckerflow.nn.models import MNIST_MEAN, MNIST_STD, pretrained_mnist_cnn

TUCKERIZED = 420_128  # weights of the three tuckerized layers (dense)


def tucker_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, TuckerLayer)}


def largest_angle_sine(old: torch.Tensor, new: torch.Tensor) -> float:
    """sin of the largest principal angle between span(old) and span(new)."""
    q_new = torch.linalg.qr(new)[0]  # vanilla factors are no longer orthonormal
    cosines = torch.linalg.svdvals(old.T @ q_new)
    smallest = float(cosines[: min(old.shape[1], new.shape[1])].min())
    return math.sqrt(max(0.0, 1.0 - min(1.0, smallest) ** 2))


def step_once(start, method, lr, budget, images, labels):
    model = copy.deepcopy(start)
    optimizer = TDLRT(model, lr=lr, budget=budget, method=method)
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    layers = tucker_layers(model)
    before = {
        n: (
            m.weight.detach().clone(),
            m.core.detach().clone(),
            [u.detach().clone() for u in m.factors],
            None if m.weight_gradient() is None else m.weight_gradient().clone(),
        )
        for n, m in layers.items()
    }
    optimizer.step()
    after = {
        n: (m.weight.detach().clone(), [u.detach().clone() for u in m.factors])
        for n, m in layers.items()
    }
    return before, after


def diagnose(kept: float, lr: float, images, labels) -> dict:
    budget = round(kept * TUCKERIZED)
    start = tuckerize(pretrained_mnist_cnn(), budget=budget, skip=("classifier.2",))
    t_before, t_after = step_once(start, "auto", lr, budget, images, labels)
    _, v_after = step_once(start, "vanilla", lr, budget, images, labels)
    with tf.use_backend("pytorch"):
        layers = {
            name: measure(layer, t_before[name], t_after[name], v_after[name], lr)
            for name, layer in tucker_layers(start).items()
        }
    return {"kept": kept, "budget": budget, "lr": lr, "layers": layers}


def measure(layer, tdlrt_before, tdlrt_after, vanilla_after, lr) -> dict:
    w0, core, factors, grad = tdlrt_before
    w_tdlrt, f_tdlrt = tdlrt_after
    w_vanilla, f_vanilla = vanilla_after
    augmented = tdlrt_augment_unchecked(core, list(factors), grad, lr)
    w_untruncated = reconstruct(augmented.core, augmented.bases)
    modes = []
    for mode in layer.adaptive_modes:
        rank, n = factors[mode].shape[1], factors[mode].shape[0]
        if rank == n:
            continue
        unfolded = tl.unfold(core, mode)  # r_i x prod(r_j)
        sigma = torch.linalg.svdvals(unfolded)
        # dL/dK_i = G_(i) V_i with V_i = kron(U_j) Q_i; S_i from QR of C_(i)^T
        q, s_t = torch.linalg.qr(unfolded.T)
        partial = grad
        for other, u in enumerate(factors):
            if other != mode:
                partial = tl.tenalg.mode_dot(partial, u.T, other)
        k_grad = tl.unfold(partial, mode) @ q  # n_i x r_i
        u_grad = k_grad @ s_t  # dL/dU_i = G_(i) V_i S_i^T
        vanilla_move = u_grad @ s_t.T  # times S_i: the weight's change / lr
        # the augmented core's mode-i rows outside the old basis
        chat_unfolded = tl.unfold(augmented.core, mode)
        new_rows = chat_unfolded[rank:]
        spectrum = torch.linalg.svdvals(chat_unfolded)
        kept_rank = f_tdlrt[mode].shape[1]
        modes.append(
            {
                "mode": mode,
                "rank_before": rank,
                "rank_after_tdlrt": kept_rank,
                "core_sigma": [float(x) for x in sigma],
                "k_grad_norm": float(k_grad.norm()),
                "normal_k_grad_norm": float(
                    (k_grad - factors[mode] @ (factors[mode].T @ k_grad)).norm()
                ),
                "sigma2_amplification": float(vanilla_move.norm() / k_grad.norm()),
                "new_direction_energy": float(new_rows.norm()),
                "augmented_sigma_kept_min": float(spectrum[kept_rank - 1]),
                "augmented_tail_discarded": float(spectrum[kept_rank:].norm()),
                "angle_sine_tdlrt": largest_angle_sine(factors[mode], f_tdlrt[mode]),
                "angle_sine_vanilla": largest_angle_sine(
                    factors[mode], f_vanilla[mode]
                ),
            }
        )
    return {
        "weight_norm": float(w0.norm()),
        "grad_norm": float(grad.norm()),
        "move_dense_sgd": lr * float(grad.norm()),
        "move_tdlrt_untruncated": float((w_untruncated - w0).norm()),
        "move_tdlrt": float((w_tdlrt - w0).norm()),
        "truncation_error": float((w_tdlrt - w_untruncated).norm()),
        "move_vanilla": float((w_vanilla - w0).norm()),
        "modes": modes,
    }


def report(result: dict) -> None:
    print(f"kept {result['kept']:.0%} (budget {result['budget']}), lr {result['lr']}")
    for name, layer in result["layers"].items():
        print(
            f"  {name}: ||W0|| {layer['weight_norm']:.3g}  ||G|| "
            f"{layer['grad_norm']:.3g}  ||W1-W0||: dense SGD "
            f"{layer['move_dense_sgd']:.3g}, TDLRT untruncated "
            f"{layer['move_tdlrt_untruncated']:.3g}, TDLRT "
            f"{layer['move_tdlrt']:.3g} (truncation error "
            f"{layer['truncation_error']:.3g}), vanilla {layer['move_vanilla']:.3g}"
        )
        for mode in layer["modes"]:
            sigma = ", ".join(f"{x:.3g}" for x in mode["core_sigma"])
            print(
                f"    mode {mode['mode']}: rank {mode['rank_before']} -> "
                f"{mode['rank_after_tdlrt']}, core sigma [{sigma}]\n"
                f"      sigma^2 amplification of a vanilla factor step "
                f"{mode['sigma2_amplification']:.3g}; new-direction energy "
                f"{mode['new_direction_energy']:.3g} vs smallest kept sigma "
                f"{mode['augmented_sigma_kept_min']:.3g} (tail discarded "
                f"{mode['augmented_tail_discarded']:.3g}); sin(largest angle) TDLRT "
                f"{mode['angle_sine_tdlrt']:.3g}, vanilla "
                f"{mode['angle_sine_vanilla']:.3g}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=float, nargs="+", default=[0.05])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.01])
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_mnist()
    images = (torch.from_numpy(data["train"][0]) - MNIST_MEAN) / MNIST_STD
    labels = torch.from_numpy(data["train"][1])
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batch = index[:128]  # the first mini-batch of the study's seed-0 epoch
    results = []
    for kept in args.kept:
        for lr in args.lr:
            results.append(diagnose(kept, lr, images[batch], labels[batch]))
            report(results[-1])
    if args.save:
        folder = args.out or RESULTS / "pretrained"  # not a Benchmarks-page study
        print(f"saved {save('lr_diagnosis', {'runs': results}, folder)}")


if __name__ == "__main__":
    try:
        main()
    except MissingDataError as error:
        raise SystemExit(f"pretrained_lr_diagnosis.py: {error}") from None
