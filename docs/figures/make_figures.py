"""Generate the figures of the documentation (run by ``docs/conf.py`` at build time).

Each figure comes from a short real computation with tuckerflow, so the pictures
cannot drift from the code: the ill-conditioning experiment of
``tests/test_p4_robustness.py`` and the rank evolution of ``examples/tensor_ode.py``.

Run: ``python docs/figures/make_figures.py [output folder]``
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tensorly as tl

import tuckerflow as tf

HERE = pathlib.Path(__file__).resolve().parent


def ill_conditioned(path: pathlib.Path) -> None:
    shape, rank = (20, 20, 20), (4, 4, 4)
    A = tf.random_tucker(
        shape, rank, random_state=0, singular_values=np.logspace(0, -10, 4)
    ).to_tensor()
    start = tf.random_tucker(
        shape, rank, random_state=1, singular_values=np.logspace(0, -12, 4)
    )

    def objective(W):
        return 0.5 * float(tl.sum((W - A) ** 2)), W - A

    runs = {
        "TDLRT": ("tdlrt", {"tol": 1e-12}),
        "explicit projected step": ("rgd", {"retraction": "factors"}),
        "vanilla factor SGD": ("vanilla", {}),
    }
    figure, axis = plt.subplots(figsize=(6.5, 3.5))
    for label, (method, options) in runs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                result = tf.integrate(
                    objective, start, method=method, lr=0.5, steps=200, **options
                )
                losses = result.history.loss
            except tf.IntegrationError as error:
                losses = error.result.history.loss
        axis.semilogy(np.maximum(losses, 1e-33), label=label)
    axis.set_xlabel("step (lr = 0.5)")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def rank_evolution(path: pathlib.Path) -> None:
    n, kappa, steps = 32, 0.005, 100
    h = 1.0 / steps
    grid = np.linspace(0, 1, n + 2)[1:-1]
    laplacian = (np.diag(-2.0 * np.ones(n)) + np.eye(n, k=1) + np.eye(n, k=-1)) * (
        n + 1
    ) ** 2
    L = tl.tensor(laplacian)

    def source(t):
        if t >= 0.6:
            return np.zeros((n, n, n))
        c = 0.2 + t
        blob = [np.exp(-((grid - x) ** 2) / 0.005) for x in (c, c, 1.0 - c)]
        return 20.0 * np.einsum("i,j,k->ijk", *blob)

    def objective(A, t):
        F = kappa * sum(tl.tenalg.mode_dot(A, L, m) for m in range(3))
        F = F + tl.tensor(source(t))
        return 0.0, -F

    start = tf.random_tucker((n, n, n), 1, random_state=0)
    start = tl.tucker_tensor.TuckerTensor((start.core * 1e-8, start.factors))
    times = [k * h for k in range(steps + 1)]
    result = tf.integrate(
        objective, start, lr=h, steps=steps, tol=1e-3, batches=iter(times)
    )
    ranks = np.array(result.history.ranks)
    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    axis.plot(np.array(times), ranks[:, 0], drawstyle="steps-post")
    axis.axvline(0.6, color="grey", linestyle=":", label="source switched off")
    axis.set_xlabel("time")
    axis.set_ylabel("Tucker rank (each mode)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(folder: pathlib.Path | None = None) -> None:
    folder = folder or HERE.parent / "_static" / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    ill_conditioned(folder / "ill_conditioned.png")
    rank_evolution(folder / "rank_evolution.png")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else None)
