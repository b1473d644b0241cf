"""Where the small factorizations of a step should run: backend or NumPy on the host.

Times :func:`tuckerflow.linalg.thin_svd` and :func:`tuckerflow.linalg.thin_qr` of the
thin and small matrices a TDLRT step factorizes (``n x 2r`` bases, ``r x prod(r)``
unfoldings) with the backend's own routines (``host_factorizations(False)``) and through
NumPy on the host (``host_factorizations(True)``), float32, median of repeats with the
device synchronized around each call. The ratio host / backend decided
``linalg.HOST_AUTO_MAX_WORK``, the ``m * n * min(m, n)`` up to which ``"auto"`` mode
runs SVDs on the host when the matrix lives on a GPU.

Run: ``python benchmarks/small_factorizations.py [--quick] [--device cuda]``
(PyTorch backend; ``--backend cupy`` for CuPy arrays).
"""

from __future__ import annotations

import argparse

import numpy as np

SHAPES = [(64, 16), (256, 32), (800, 48), (1024, 128), (512, 512), (4096, 256)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="torch device (pytorch)")
    parser.add_argument("--backend", default="pytorch", choices=["pytorch", "cupy"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import tensorly as tl
    from _common import median_seconds, save, table

    import tuckerflow as tf
    from tuckerflow.linalg import thin_qr, thin_svd

    shapes = SHAPES[:2] if args.quick else SHAPES
    repeats = 3 if args.quick else 20
    if args.backend == "cupy":
        import cupy

        device = "cuda (cupy)"

        def sync():
            cupy.cuda.Device().synchronize()
    else:
        import torch

        device = args.device
        sync = torch.cuda.synchronize if device.startswith("cuda") else None
    rows = []
    with tf.use_backend(args.backend):
        context = {"device": args.device} if args.backend == "pytorch" else {}
        for rows_, cols in shapes:
            data = np.random.default_rng(0).standard_normal((rows_, cols))
            matrix = tl.tensor(data, dtype=tl.float32, **context)
            for name, function in (("svd", thin_svd), ("qr", thin_qr)):
                times = {}
                for host in (False, True):
                    with tf.host_factorizations(host):
                        times[host] = median_seconds(
                            lambda f=function, m=matrix: f(m),
                            repeats=repeats,
                            warmup=2,
                            sync=sync,
                        )
                rows.append(
                    {
                        "shape": f"{rows_}x{cols}",
                        "work": rows_ * cols * min(rows_, cols),
                        "factorization": name,
                        "backend_ms": 1e3 * times[False],
                        "host_ms": 1e3 * times[True],
                        "host_over_backend": times[True] / times[False],
                    }
                )
    print(
        table(
            rows,
            [
                ("shape", "shape", "s"),
                ("work", "m n min(m,n)", ",d"),
                ("factorization", "op", "s"),
                ("backend_ms", "backend ms", ".3f"),
                ("host_ms", "host ms", ".3f"),
                ("host_over_backend", "host/backend", ".2f"),
            ],
        )
    )
    name = f"small_factorizations_{args.backend}_" + device.split()[0].replace(":", "")
    path = save(
        f"{name}_quick" if args.quick else name,
        {"backend": args.backend, "device": device, "dtype": "float32", "rows": rows},
        args.out,
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
