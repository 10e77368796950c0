"""Training speed of the project against PyTorch on the same networks, side by side in one process.

Both frameworks train the same architecture (same layer sizes, same Adam
settings, float32) on the very same random batches; rounds alternate (project,
PyTorch, project, ...) so that drifts in the machine's speed hit both alike.
A round is ``--steps`` training steps (forward, softmax cross-entropy, backward,
Adam update), after ``--warmup`` untimed steps. The ratio of a round is
project samples/s over PyTorch samples/s (above 1: the project is faster):

    pip install -e '.[bench]'                         # torch==2.13.0, for this benchmark only
    python bench/bench_torch.py                       # the default CNN and the MLP 784-800-10
    python bench/bench_torch.py --only cnn --rounds 9 --json

PyTorch runs with ``torch.set_num_threads(--threads)`` (default: every core)
and fused Adam; the project with its own NumPy / OpenBLAS threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from bench_report import emit

from mnist_classification.nn.losses import SoftmaxCrossEntropy
from mnist_classification.nn.network import build_network
from mnist_classification.nn.optimizers import make_optimizer
from mnist_classification.infra.params import validate

CLASSES = [str(i) for i in range(10)]

#: The networks compared: the default CNN of the README and the MLP 784-800-10 (train params).
CONFIGS = {
    "cnn": {"model": "cnn", "hidden": [256], "dropout": 0.3},
    "mlp800": {"model": "mlp", "hidden": [800], "dropout": 0.0},
}


def project_network(name: str, conv: str = "auto"):
    """The project's untrained network for ``CONFIGS[name]`` (28 x 28 images, ten classes);
    ``conv`` is ``train.cnn.conv``."""
    config = {**CONFIGS[name], "cnn": {"conv": conv}}
    p = validate({"train": config})["train"]
    return build_network(p, (28, 28), CLASSES, 0.0, 1.0)


def torch_network(network):
    """A ``torch.nn.Sequential`` with the same layers as the project ``network``, holding copies of its weights."""
    import torch
    from torch import nn

    layers = []
    for layer in network.layers:
        kind, config = layer.kind, layer.config()
        if kind == "add_channel":
            layers.append(nn.Unflatten(1, (1, network.input_shape[0])))  # (N, H, W) -> (N, 1, H, W)
        elif kind == "conv2d":
            k = config["kernel_size"]
            conv = nn.Conv2d(config["in_channels"], config["out_channels"], k, padding=k // 2)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(layer.params["W"].reshape(conv.weight.shape)))
                conv.bias.copy_(torch.from_numpy(layer.params["b"]))
            layers.append(conv)
        elif kind == "batchnorm2d":
            # The project's momentum keeps that share of the running statistics; PyTorch's is the new share.
            layers.append(nn.BatchNorm2d(config["channels"], eps=config["eps"], momentum=1 - config["momentum"]))
            if config.get("activation") == "relu":  # applied by the project's batch norm in its own pass
                layers.append(nn.ReLU())
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "maxpool2d":
            layers.append(nn.MaxPool2d(config["size"]))
        elif kind == "flatten":
            layers.append(nn.Flatten())
        elif kind == "dense":
            dense = nn.Linear(config["in_features"], config["out_features"])
            with torch.no_grad():
                dense.weight.copy_(torch.from_numpy(layer.params["W"].T))
                dense.bias.copy_(torch.from_numpy(layer.params["b"]))
            layers.append(dense)
        elif kind == "dropout":
            layers.append(nn.Dropout(config["rate"]))
        else:
            raise ValueError(f"no PyTorch counterpart for layer type {kind!r}")
    return nn.Sequential(*layers)


def project_stepper(network, lr: float):
    """A function that runs one training step of the project on (images, labels)."""
    optimizer = make_optimizer("adam", lr, 0.9, 0.0)
    loss_fn = SoftmaxCrossEntropy()
    trainable = network.trainable()

    def step(images, labels):
        logits = network.forward(images, training=True)
        loss_fn.forward(logits, labels)
        network.backward(loss_fn.backward())
        optimizer.update(trainable)
    return step


def torch_stepper(model, lr: float):
    """The same training step in PyTorch (fused Adam, mean cross-entropy)."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()
    return step


def batches(count: int, batch: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` random batches of standard-normal 28 x 28 images and labels in 0..9."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 28, 28), dtype=np.float32), rng.integers(0, 10, batch))
            for _ in range(count)]


def time_round(step, data) -> float:
    """Seconds to run ``step`` on every (images, labels) of ``data``."""
    start = time.perf_counter()
    for images, labels in data:
        step(images, labels)
    return time.perf_counter() - start


def summary(project_seconds: list[float], torch_seconds: list[float], samples: int) -> dict:
    """Samples/s of each side (medians) and the per-round ratios project/PyTorch (median, range)."""
    ratios = [t / p for p, t in zip(project_seconds, torch_seconds)]
    return {"project_samples_per_second": round(samples / statistics.median(project_seconds), 1),
            "torch_samples_per_second": round(samples / statistics.median(torch_seconds), 1),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "rounds": len(ratios)}


def compare(name: str, rounds: int, steps: int, warmup: int, batch: int, conv: str = "auto") -> dict:
    """Alternate ``rounds`` timed rounds of the project and PyTorch on the same batches; see :func:`summary`."""
    import torch

    network = project_network(name, conv)
    model = torch_network(network)
    lr = 1e-3
    ours, theirs = project_stepper(network, lr), torch_stepper(model, lr)
    data = batches(steps, batch)
    torch_data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    time_round(ours, data[:warmup])
    time_round(theirs, torch_data[:warmup])
    project_seconds, torch_seconds = [], []
    for _ in range(rounds):
        project_seconds.append(time_round(ours, data))
        torch_seconds.append(time_round(theirs, torch_data))
    return summary(project_seconds, torch_seconds, steps * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=0, help="training steps per round (default: per model)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--conv", choices=["auto", "blocked", "im2col", "winograd"], default="auto",
                        help="the project's convolution algorithm (train.cnn.conv)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results, lines = {}, []
    for name in args.only or list(CONFIGS):
        steps = args.steps or (25 if name == "cnn" else 200)
        results[name] = r = compare(name, args.rounds, steps, args.warmup, args.batch, args.conv)
        lines.append(f"{name:7s} project {r['project_samples_per_second']:9.1f} samples/s  "
                     f"PyTorch {r['torch_samples_per_second']:9.1f} samples/s  ratio {r['ratio_median']:.2f}x "
                     f"[{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}] "
                     f"(median of {args.rounds} rounds of {steps} steps, batch {args.batch})")
    emit(results, lines, args.json, torch=torch.__version__, torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
