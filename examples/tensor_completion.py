"""Rank-adaptive approximation and completion of a real hyperspectral image with TDLRT.

Data: a 64 x 64 pixel patch of the Indian Pines cube (200 spectral bands, AVIRIS), which
ships with TensorLy. Two objectives, both minimised by :func:`tuckerflow.integrate`
with the rank-adaptive TDLRT step from a rank-(1, 1, 1) start:

1. approximation, ``0.5 ||W - T||^2``: the ranks grow until the tolerance is met;
2. completion from 50% of the entries, ``0.5 ||M * (W - T)||^2`` with a random mask
   ``M``: the error on the *held-out* half measures how well the low-rank model
   generalises.

Run: ``python examples/tensor_completion.py [--steps 60] [--backend pytorch]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorly as tl
from tensorly.datasets import load_indian_pines

import tuckerflow as tf


def relative(error, reference) -> float:
    return float(tl.to_numpy(tl.norm(error) / tl.norm(reference)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tol", type=float, default=0.02)
    parser.add_argument(
        "--backend", default="numpy", choices=["numpy", "pytorch", "cupy"]
    )
    args = parser.parse_args()

    cube = load_indian_pines().tensor[40:104, 40:104, :].astype(np.float64)
    cube /= np.linalg.norm(cube) / np.sqrt(cube.size)  # unit RMS
    mask = np.random.default_rng(0).random(cube.shape) < 0.5
    print(f"Indian Pines patch {cube.shape}, backend {args.backend}, tol {args.tol}")

    with tf.use_backend(args.backend):
        T = tl.tensor(cube, dtype=tl.backend.float64)
        M = tl.tensor(mask.astype(np.float64), dtype=tl.backend.float64)
        start = tf.random_tucker(cube.shape, 1, random_state=0)

        def approximation(W):
            residual = W - T
            return 0.5 * tl.sum(residual * residual), residual

        def completion(W):
            residual = M * (W - T)
            return 0.5 * tl.sum(residual * residual), residual

        for name, objective, lr in (
            ("approximation", approximation, 1.0),
            ("completion (50% observed)", completion, 1.0),
        ):
            print(f"\n{name}")
            print(
                f"{'step':>5} {'ranks':>14} {'observed err':>13} {'held-out err':>13}"
            )
            started = time.perf_counter()

            def report(step, tucker, loss):
                if step % 10 == 9 or step == 0:
                    W = tucker.to_tensor()
                    seen = relative(M * (W - T), M * T)
                    unseen = relative((1 - M) * (W - T), (1 - M) * T)
                    print(
                        f"{step + 1:5d} {tucker.rank!s:>14} {seen:13.4f} {unseen:13.4f}"
                    )

            result = tf.integrate(
                objective, start, lr=lr, steps=args.steps, tol=args.tol, callback=report
            )
            elapsed = time.perf_counter() - started
            count = tf.parameter_count(cube.shape, result.tucker.rank)
            print(
                f"final ranks {result.tucker.rank}: {count:,} parameters "
                f"({count / cube.size:.1%} of the patch), "
                f"{elapsed / result.steps * 1e3:.0f} ms/step"
            )
            best = tf.hosvd(T, rank=result.tucker.rank)
            error = relative(best.to_tensor() - T, T)
            print(f"HOSVD of the full patch at these ranks: error {error:.4f}")


if __name__ == "__main__":
    main()
