"""Study 5: ill-conditioning (the paper's Figure 2 analogue).

Least squares ``L(W) = 0.5 ||W - A||^2`` in 30 x 30 x 30, ``A`` of multilinear rank
(5, 5, 5) whose core singular values decay from 1 to 1e-10, every method started from
the same rank-5 point with core singular values 1 .. 1e-12, at several learning rates:

* TDLRT (rank-adaptive, ``tol = 1e-12``) and fixed-rank TDLRT (``rank = 5``);
* vanilla factor SGD (chain rule on core and factors);
* Riemannian gradient descent with the HOSVD retraction and with the factored explicit
  Euler step of the projected flow (``retraction="factors"``).

Records the loss curve of every run, whether it diverged (non-finite or above 1e6 times
the initial loss), whether it decreased monotonically, and its final loss.

Run: ``python benchmarks/ill_conditioning.py [--quick]``
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import tensorly as tl
from _common import save, table

import tuckerflow as tf

METHODS = {
    "TDLRT": ("tdlrt", {"tol": 1e-12}),
    "TDLRT fixed rank": ("tdlrt", {"rank": 5}),
    "vanilla factor SGD": ("vanilla", {}),
    "RGD (HOSVD retraction)": ("rgd", {}),
    "RGD (explicit factor step)": ("rgd", {"retraction": "factors"}),
}


def run(method: str, options: dict, lr: float, steps: int, size: int):
    shape = (size,) * 3
    A = tf.random_tucker(
        shape, 5, random_state=0, singular_values=np.logspace(0, -10, 5)
    ).to_tensor()
    start = tf.random_tucker(
        shape, 5, random_state=1, singular_values=np.logspace(0, -12, 5)
    )

    def objective(W):
        return 0.5 * float(tl.sum((W - A) ** 2)), W - A

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            result = tf.integrate(
                objective, start, method=method, lr=lr, steps=steps, **options
            )
            losses = result.history.loss
        except tf.IntegrationError as error:
            losses = [*error.result.history.loss, float("inf")]
    return [float(v) for v in losses]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rates = (0.5, 1.5) if args.quick else (0.05, 0.2, 0.5, 1.0, 1.5)
    steps, size = (50, 12) if args.quick else (300, 30)
    rows, curves = [], {}
    for name, (method, options) in METHODS.items():
        for lr in rates:
            losses = run(method, options, lr, steps, size)
            finite = np.isfinite(losses)
            initial = losses[0]
            diverged = (not finite.all()) or max(losses) > 1e6 * initial
            monotone = bool(
                np.all(np.diff(np.asarray(losses)[finite]) <= 1e-12 * initial)
            )
            rows.append(
                {
                    "method": name,
                    "lr": lr,
                    "final_loss": losses[-1],
                    "max_loss": float(np.max(np.asarray(losses)[finite])),
                    "diverged": bool(diverged),
                    "monotone": monotone,
                }
            )
            curves[f"{name} lr={lr}"] = losses
            print(
                f"{name:>28} lr={lr:<5} final {losses[-1]:9.2e} "
                f"{'DIVERGED' if diverged else ''}{' monotone' if monotone else ''}",
                flush=True,
            )
    print()
    print(
        table(
            rows,
            [
                ("method", "method", "s"),
                ("lr", "lr", "g"),
                ("final_loss", "final loss", ".2e"),
                ("max_loss", "max loss", ".2e"),
                ("diverged", "diverged", ""),
                ("monotone", "monotone", ""),
            ],
        )
    )
    path = save(
        "ill_conditioning_quick" if args.quick else "ill_conditioning",
        {"steps": steps, "shape": [size] * 3, "rows": rows, "curves": curves},
        args.out,
    )
    plot(curves, rates, path.with_suffix(".png"))
    print(f"saved {path}")


def plot(curves, rates, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        1, len(rates), figsize=(3.2 * len(rates), 3.2), sharey=True
    )
    for axis, lr in zip(np.atleast_1d(axes), rates):
        for name in METHODS:
            losses = np.asarray(curves[f"{name} lr={lr}"])
            losses = np.where(np.isfinite(losses), losses, np.nan)
            axis.semilogy(np.clip(losses, 1e-32, 1e60), label=name)
        axis.set_title(f"lr = {lr}")
        axis.set_xlabel("step")
    np.atleast_1d(axes)[0].set_ylabel("loss")
    np.atleast_1d(axes)[-1].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
