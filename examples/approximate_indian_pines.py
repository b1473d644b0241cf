"""Rank-adaptive Tucker approximation of a real hyperspectral image.

The Indian Pines cube (145 x 145 pixels x 200 spectral bands, AVIRIS sensor) ships with
TensorLy. For each tolerance, :func:`tuckerflow.hosvd` picks the smallest Tucker ranks
whose total relative error is at most ``tol``; :func:`tuckerflow.truncate` then
re-truncates the result to a parameter budget without touching the full tensor.

Run: ``python examples/approximate_indian_pines.py [--backend pytorch]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorly as tl
from tensorly.datasets import load_indian_pines

import tuckerflow as tf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", default="numpy", choices=["numpy", "pytorch", "cupy"]
    )
    args = parser.parse_args()

    cube = load_indian_pines().tensor.astype(np.float64)
    print(
        f"Indian Pines cube {cube.shape}, {cube.size:,} entries, backend {args.backend}"
    )
    with tf.use_backend(args.backend):
        tensor = tl.tensor(cube, dtype=tl.backend.float64)
        norm = float(tl.to_numpy(tl.norm(tensor)))
        print(
            f"{'tol':>6} {'ranks':>16} {'rel. error':>11} {'parameters':>11} "
            f"{'compression':>11} {'time':>8}"
        )
        for tol in (0.005, 0.01, 0.02, 0.05, 0.1):
            start = time.perf_counter()
            approx = tf.hosvd(tensor, tol=tol)
            elapsed = time.perf_counter() - start
            error = float(tl.to_numpy(tl.norm(approx.to_tensor() - tensor))) / norm
            count = tf.parameter_count(approx.shape, approx.rank)
            print(
                f"{tol:6.3f} {approx.rank!s:>16} {error:11.4f} {count:11,d} "
                f"{1 - count / cube.size:11.2%} {elapsed:7.2f}s"
            )
            assert error <= tol * (1 + 1e-8), "the tolerance bounds the total error"

        budget = 20_000
        fitted = tf.truncate(tf.hosvd(tensor, tol=0.01), budget=budget)
        error = float(tl.to_numpy(tl.norm(fitted.to_tensor() - tensor))) / norm
        print(
            f"budget {budget:,}: ranks {fitted.rank}, "
            f"{tf.parameter_count(fitted.shape, fitted.rank):,} parameters, "
            f"rel. error {error:.4f}"
        )


if __name__ == "__main__":
    main()
