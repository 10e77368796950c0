"""What a training recipe of the project takes in PyTorch, on the project's own terms (benchmark only).

Trains a recipe of conf/train/ (default ``cnn-fast``) in PyTorch as the train stage trains it, and
reports the validation accuracy of every epoch, the test accuracy (scored once, after training), the
training seconds, samples/s and the process's peak RSS:

    pip install -e '.[bench]'                                   # torch==2.13.0, for this benchmark only
    python bench/bench_recipe_torch.py                          # `dvc exp run -S train=cnn-fast`, in PyTorch
    python bench/bench_recipe_torch.py --config cnn --epochs 2 --json
    python bench/bench_recipe_torch.py --epochs 1 --limit 2000  # a smoke run on the first 2,000 images of each split

The same as the train stage: the params, composed from conf/ as ``dvc exp run -S train=NAME
[-S train.epochs=N]`` composes them and validated by the stages' own check; the prepared splits in
``--data`` (default data/prepared) standardised with meta.json's mean and std; the network
(:func:`bench_torch.torch_network` of :func:`build_network`'s, so the same initial weights); the
batches (shuffled by the same generator) and their augmentation (the project's Augmenter on the NumPy
batch, handed to PyTorch); the learning rate, set from the project's Schedule before every step;
Adam (beta1 = train.momentum, beta2 0.999, eps 1e-8, bias-corrected, L2 weight decay added to the
weights' gradients only: PyTorch's fused Adam with a group per decay); validation after every epoch
in batches of 250, keeping the best epoch's weights (early stopping by train.patience); the test
split scored once with those weights. What differs: dropout masks come from PyTorch's generator
(seeded by train.seed), rounding, and nothing is calibrated or written. Recipes with another
optimiser than Adam or with ``train.mirror_average`` are refused.

``train_seconds`` counts what the stage's ``train_seconds`` counts: from the first epoch's shuffle
to the best weights restored, augmentation and validation included; ``samples_per_second`` is the
training samples seen over them; ``peak_memory_mib`` is the process's max RSS (the stage's
``peak_memory_mib``). PyTorch runs with ``torch.set_num_threads(--threads)`` (default: every core).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_report import emit
from bench_torch import torch_network

from mnist_classification.data.preprocessing import (
    load_meta,
    load_prepared,
    standardise,
    standardised_black,
)
from mnist_classification.infra.errors import PipelineError, run_cli
from mnist_classification.infra.params import load_yaml, validate
from mnist_classification.nn.augment import Augmenter
from mnist_classification.nn.network import build_network
from mnist_classification.nn.schedules import Schedule

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
#: The training stage's validation batch (nn.training.evaluate).
EVAL_BATCH = 250
#: Validation images on which the two networks' initial outputs are compared (few: the project's
#: forward pass would otherwise add to the peak RSS).
CHECK_IMAGES = 8


def recipe(name: str, epochs: int | None = None) -> dict:
    """The ``train`` params of conf/train/NAME.yaml as ``dvc exp run -S train=NAME [-S train.epochs=N]``
    composes them, validated as the stages validate params.yaml."""
    if not (CONF / "train" / f"{name}.yaml").is_file():
        known = ", ".join(sorted(path.stem for path in (CONF / "train").glob("*.yaml")))
        raise PipelineError(f"--config {name}: no {CONF / 'train' / name}.yaml; known recipes: {known}")
    from dvc.utils.hydra import compose_and_dump

    overrides = [f"train={name}"] + ([f"train.epochs={epochs}"] if epochs is not None else [])
    with tempfile.TemporaryDirectory() as folder:
        params = Path(folder) / "params.yaml"
        compose_and_dump(params, str(CONF), None, "config", "", overrides)
        source = " ".join(["-S " + override for override in overrides])
        train = validate(load_yaml(params.read_text(encoding="utf-8"), source), source)["train"]
    if train["optimizer"] != "adam":
        raise PipelineError(f"--config {name}: train.optimizer is {train['optimizer']!r}; this benchmark runs adam")
    if train["mirror_average"]:
        raise PipelineError(f"--config {name}: train.mirror_average is true; this benchmark scores plain "
                            "predictions only, without averaging each image with its mirror")
    return train


def load_splits(folder: Path, limit: int | None = None) -> dict:
    """meta.json and the train, val and test splits of ``folder``, standardised as the train stage does:
    ``{"meta": dict, "train": (images (N, H, W) float32, labels (N,) int64), "val": ..., "test": ...}``,
    each split cut to its first ``limit`` images if given."""
    meta = load_meta(folder / "meta.json")
    splits = {"meta": meta}
    for split in ("train", "val", "test"):
        images, labels = load_prepared(folder / f"{split}.npz")
        splits[split] = (standardise(images[:limit], meta["mean"], meta["std"]), labels[:limit].astype(np.int64))
    return splits


def adam(model: torch.nn.Module, network, p: dict) -> torch.optim.Adam:
    """PyTorch's fused Adam set as the project's: weight decay on the arrays the project decays, only."""
    decayed = [flag for _, _, flag in network.trainable()]
    params = list(model.parameters())
    assert [t.numel() for t in params] == [a.size for a, _, _ in network.trainable()], "parameters out of step"
    groups = [{"params": [t for t, flag in zip(params, decayed) if flag], "weight_decay": p["weight_decay"]},
              {"params": [t for t, flag in zip(params, decayed) if not flag], "weight_decay": 0.0}]
    return torch.optim.Adam(groups, lr=p["lr"], betas=(p["momentum"], 0.999), eps=1e-8, fused=True)


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy on standardised images (N, H, W), as nn.training.evaluate."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), EVAL_BATCH):
            logits = model(torch.from_numpy(images[start:start + EVAL_BATCH]))
            batch_labels = torch.from_numpy(labels[start:start + EVAL_BATCH])
            total_loss += torch.nn.functional.cross_entropy(logits, batch_labels, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == batch_labels).sum())
    return total_loss / len(images), correct / len(images)


def initial_difference(network, model: torch.nn.Module, images: np.ndarray) -> float:
    """Largest absolute difference between the two networks' inference logits on ``images``."""
    model.eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(images)).numpy()
    return float(np.abs(network.forward(images, training=False) - theirs).max())


def epoch_batches(images: np.ndarray, labels: np.ndarray, order: np.ndarray, buffer: np.ndarray,
                  augment: Augmenter | None):
    """(batch (B, H, W) float32, labels (B,)) of one epoch: ``buffer``-sized slices of ``order``, gathered
    into ``buffer`` and augmented, as nn.training.train makes them."""
    for start in range(0, len(order), len(buffer)):
        index = order[start:start + len(buffer)]
        batch = np.take(images, index, axis=0, out=buffer[:len(index)])
        yield (batch if augment is None else augment(batch)), labels[index]


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, p: dict, splits: dict,
          augment: Augmenter | None) -> dict:
    """The loop of nn.training.train in PyTorch: per-epoch history, best epoch, seconds and samples seen."""
    images, labels = splits["train"]
    n, batch_size, epochs = len(images), p["batch_size"], p["epochs"]
    steps = math.ceil(n / batch_size)
    schedule = Schedule(p["schedule"], p["lr"], epochs, p["warmup_epochs"], p["step_epochs"], p["gamma"])
    rng = np.random.default_rng([p["seed"], 2])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=p["label_smoothing"])
    batch_buffer = np.empty((batch_size, *images.shape[1:]), dtype=np.float32)
    history, best_epoch, best_accuracy, since_best, samples_seen = [], 0, -1.0, 0, 0
    best_state = {key: value.clone() for key, value in model.state_dict().items()}
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        order = rng.permutation(n)
        model.train()
        epoch_loss, epoch_correct = 0.0, 0
        for step, (batch, batch_labels) in enumerate(epoch_batches(images, labels, order, batch_buffer, augment)):
            batch_labels = torch.from_numpy(batch_labels)
            lr = schedule.rate(epoch - 1 + (step + 1) / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            logits = model(torch.from_numpy(batch))
            loss = loss_fn(logits, batch_labels)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(batch_labels)
            epoch_correct += int((logits.argmax(dim=1) == batch_labels).sum())
        val_loss, val_accuracy = evaluate(model, *splits["val"])
        samples_seen += n
        history.append({"epoch": epoch, "train_loss": round(epoch_loss / n, 6),
                        "train_accuracy": round(epoch_correct / n, 6), "val_loss": round(val_loss, 6),
                        "val_accuracy": round(val_accuracy, 6), "lr": lr,
                        "seconds": round(time.perf_counter() - epoch_start, 2)})
        if val_accuracy > best_accuracy:
            best_accuracy, best_epoch, since_best = val_accuracy, epoch, 0
            best_state = {key: value.clone() for key, value in model.state_dict().items()}
        else:
            since_best += 1
            if p["patience"] and since_best >= p["patience"]:
                break
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    return {"history": history, "best_epoch": best_epoch, "seconds": seconds, "samples_seen": samples_seen}


def run(config: str, epochs: int | None, data: Path, limit: int | None) -> dict:
    """Train recipe ``config`` in PyTorch on the prepared splits in ``data``; every reported figure."""
    p = recipe(config, epochs)
    splits = load_splits(data, limit)
    meta = splits["meta"]
    network = build_network(p, splits["train"][0].shape[1:], meta["classes"], meta["mean"], meta["std"])
    model = torch_network(network)
    start_difference = initial_difference(network, model, splits["val"][0][:CHECK_IMAGES])
    torch.manual_seed(p["seed"])  # dropout masks
    augment = Augmenter.from_params(p["augment"], np.random.default_rng([p["seed"], 3]),
                                    standardised_black(meta["mean"], meta["std"]))
    result = train(model, adam(model, network, p), p, splits, augment)
    test_loss, test_accuracy = evaluate(model, *splits["test"])
    best = result["history"][result["best_epoch"] - 1]
    return {"config": config, "epochs": p["epochs"], "epochs_run": len(result["history"]),
            "best_epoch": result["best_epoch"], "val_accuracy": best["val_accuracy"],
            "test_accuracy": round(test_accuracy, 6), "test_loss": round(test_loss, 6),
            "train_seconds": round(result["seconds"], 2),
            "samples_per_second": round(result["samples_seen"] / result["seconds"], 1),
            "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "train_images": len(splits["train"][0]), "initial_logit_difference": start_difference,
            "history": result["history"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cnn-fast", help="recipe conf/train/NAME.yaml (default cnn-fast)")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs instead of the recipe's")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared", help="the prepared splits")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.limit is not None and args.limit <= 0:
        raise PipelineError(f"--limit is {args.limit}; expected a number of images > 0")

    torch.set_num_threads(args.threads)
    r = run(args.config, args.epochs, args.data, args.limit)
    epochs = ", ".join(f"{row['val_accuracy']:.2%}" for row in r["history"])
    line = (f"{r['config']} in PyTorch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{r['train_images']} training images: validation {epochs} (kept epoch {r['best_epoch']}); "
            f"test {r['test_accuracy']:.2%}; {r['train_seconds']:.1f} s, {r['samples_per_second']:.1f} samples/s, "
            f"peak RSS {r['peak_memory_mib']:.0f} MiB")
    emit({r["config"]: r}, [line], args.json, torch=torch.__version__, torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    run_cli(main, "bench_recipe_torch")
