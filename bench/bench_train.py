"""Training throughput versus the machine's float32 matrix-multiply peak.

For each network it times the real training loop (``training.train``: batch
gathering, forward, loss, backward, optimiser update) on random data, counts
the floating-point work of its matrix products, and times the very same
matrix products alone (preallocated, back to back) as the peak the loop could
reach. Each repeat times one epoch of the loop and then the bare products, and
the fraction of peak is the median of the per-repeat fractions (with its range):

    python bench/bench_train.py                 # MLP 784-800-10, 784-256-10 and the default CNN
    python bench/bench_train.py --only mlp800 --repeats 7
    python bench/bench_train.py --optimizer momentum   # the loop with a cheaper update rule
    python bench/bench_train.py --only cnn --conv winograd   # the CNN with Winograd convolutions

The CNN's peak is timed on the products its convolutions really run: for
Winograd (``train.cnn.conv: winograd``) the 16 per-frequency products of each pass
(the first layer, with one input channel, runs blocked im2col there), for im2col and
blocked im2col (``auto``) the column-matrix products, as whole-batch products.

The optimiser's update is elementwise work that NumPy runs on one core, so its
rule sets how close the loop gets to the peak: Adam (the pipeline's default)
makes ten passes over every parameter per step, momentum SGD four.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from bench_report import emit

from mnist_classification.infra.params import validate
from mnist_classification.nn.conv import DIRECT_BELOW, Conv2D
from mnist_classification.nn.layers import Dense
from mnist_classification.nn.network import build_network
from mnist_classification.nn.optimizers import make_optimizer
from mnist_classification.nn.schedules import Schedule
from mnist_classification.nn.training import train
from mnist_classification.nn.winograd import tiles

CLASSES = [str(i) for i in range(10)]

CONFIGS = {
    "mlp800": {"model": "mlp", "hidden": [800], "dropout": 0.0},
    "mlp256": {"model": "mlp", "hidden": [256], "dropout": 0.0},
    "cnn": {"model": "cnn", "hidden": [128], "dropout": 0.0},
}


def matmul_shapes(network, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product one training step performs: forward, weight and input grads."""
    shapes = []
    shape = network.input_shape
    for layer in network.layers:
        shapes += layer_matmuls(layer, shape, batch, first=not layer.needs_input_grad)
        shape = layer.output_shape(shape)
    return shapes


def layer_matmuls(layer, in_shape, batch, first):
    if isinstance(layer, Dense):
        i, o = layer.in_features, layer.out_features
        products = [(batch, i, o), (i, batch, o)]          # y = x W ; dW = x^T dy
        if not first:
            products.append((batch, o, i))                 # dx = dy W^T
        return products
    if isinstance(layer, Conv2D) and layer.method == "winograd" and layer.in_channels >= DIRECT_BELOW:
        c, h, w = in_shape
        f, tile_rows, tile_cols = layer.out_channels, *tiles(h, w)
        t = tile_rows * tile_cols * batch
        products = [(t, c, f)] * 16 + [(c, t, f)] * 16          # M = V U ; dU = V^T dM, per frequency
        if not first:
            products += [(t, f, c)] * 16                        # dV = dM U^T
        return products
    if isinstance(layer, Conv2D):
        c, h, w = in_shape
        f, kk, pixels = layer.out_channels, layer.kernel_size ** 2, batch * h * w
        products = [(f, c * kk, pixels), (c * kk, pixels, f)]   # Y = W cols ; dW^T = cols dY^T
        if not first:
            if layer.uses_col2im():
                products.append((c * kk, f, pixels))            # dX = col2im(W^T dY)
            else:
                products.append((c, f * kk, pixels))            # dX = rotated W @ im2col(dY)
        return products
    return []


def time_matmuls(shapes, repeats: int = 30) -> float:
    """Seconds for one pass over ``shapes`` as bare float32 matrix products (median of repeats)."""
    rng = np.random.default_rng(0)
    operands = [(rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32),
                 np.empty((m, n), np.float32)) for m, k, n in shapes]
    for a, b, c in operands:
        np.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b, c in operands:
            np.matmul(a, b, out=c)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_training(config: dict, samples: int, batch: int, optimizer_name: str = "adam",
                  conv: str = "auto") -> tuple[float, object]:
    """Seconds of one epoch of the real training loop over ``samples`` random images, and the network."""
    p = validate({"train": {**config, "cnn": {"conv": conv}, "optimizer": optimizer_name, "schedule": "constant",
                            "batch_size": batch}})["train"]
    network = build_network(p, (28, 28), CLASSES, 0.0, 1.0)
    optimizer = make_optimizer(optimizer_name, 1e-4, 0.9, 0.0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((samples, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, samples).astype(np.uint8)
    result = train(network, optimizer, Schedule("constant", 1e-4, 1), images, labels, images[:10], labels[:10],
                   epochs=1, batch_size=batch, patience=0, rng=rng, progress=False)
    return result.seconds, network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=0, help="samples per timed epoch (default: per model)")
    parser.add_argument("--optimizer", choices=["adam", "momentum", "nesterov", "sgd"], default="adam")
    parser.add_argument("--conv", choices=["auto", "blocked", "im2col", "winograd"], default="auto", help="train.cnn.conv of the CNN")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results, lines = {}, []
    for name in args.only or list(CONFIGS):
        samples = args.samples or (3200 if name == "cnn" else 25600)
        seconds, peaks, fractions = [], [], []
        for _ in range(args.repeats):
            # The loop and its matrix products are timed back to back in every repeat, so
            # drifts in the machine's speed (shared hosts, clocks) cancel in the fraction.
            elapsed, network = time_training(CONFIGS[name], samples, args.batch, args.optimizer, args.conv)
            shapes = matmul_shapes(network, args.batch)
            flops_per_step = sum(2 * m * k * n for m, k, n in shapes)
            steps = -(-samples // args.batch)
            seconds.append(elapsed)
            peaks.append(flops_per_step / time_matmuls(shapes, repeats=10))
            fractions.append(flops_per_step * steps / elapsed / peaks[-1])
        loop = statistics.median(seconds)
        results[name] = {"samples_per_second": round(samples / loop, 1),
                         "loop_gflops": round(flops_per_step * steps / loop / 1e9, 2),
                         "matmul_peak_gflops": round(statistics.median(peaks) / 1e9, 2),
                         "fraction_of_peak": round(statistics.median(fractions), 3),
                         "fraction_range": [round(min(fractions), 3), round(max(fractions), 3)],
                         "median_epoch_seconds": round(loop, 6), "samples": samples, "batch": args.batch,
                         "optimizer": args.optimizer, "conv": args.conv if name == "cnn" else None,
                         "parameters": network.count_parameters()}
        r = results[name]
        lines.append(f"{name:7s} {r['samples_per_second']:9.1f} samples/s  loop {r['loop_gflops']:6.2f} GFLOP/s  "
                     f"matmul peak {r['matmul_peak_gflops']:6.2f} GFLOP/s  = {100 * r['fraction_of_peak']:.1f}% "
                     f"[{100 * r['fraction_range'][0]:.1f}-{100 * r['fraction_range'][1]:.1f}%] "
                     f"(medians of {args.repeats}, batch {args.batch}, {args.optimizer})")
    emit(results, lines, args.json, OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE"))


if __name__ == "__main__":
    main()
