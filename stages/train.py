"""Train stage: data/prepared -> models/model.npz, plots/history.csv, metrics/train.json, dvclive/train/.

``python stages/train.py [--params FILE] [--seed N] [--outputs DIR]``: the ``train`` section of
FILE (default params.yaml), its ``train.seed`` replaced by N if given, and the outputs under DIR
(default: the project root) in the same layout - how the committee's members are trained.

Every epoch is logged live through DVCLive to dvclive/train/ (metrics.json: the latest epoch;
plots/metrics/: one TSV per metric), so `dvc exp show` and VS Code follow a running experiment.
After training (``train.calibrate``), a softmax temperature is fitted on the validation split and
stored in the model if it helps (:func:`mnist_classification.reports.calibration.calibrate`);
metrics/train.json's ``calibration`` records it and the validation cross-entropy and ECE before and
after. The model, its history and its final metrics (with the numerical environment) are written
together at the end.
"""

import argparse
import resource
import sys
from pathlib import Path

import numpy as np

from mnist_classification.data.preprocessing import (
    load_meta,
    load_prepared,
    standardise,
    standardised_black,
)
from mnist_classification.infra import atomic
from mnist_classification.infra.environment import numerical_environment
from mnist_classification.infra.errors import PipelineError, run_cli
from mnist_classification.infra.params import load_params
from mnist_classification.nn.augment import Augmenter
from mnist_classification.nn.footprint import check_training_memory
from mnist_classification.nn.network import build_network
from mnist_classification.nn.optimizers import make_optimizer
from mnist_classification.nn.schedules import Schedule
from mnist_classification.nn.training import choose_mirror_average, train
from mnist_classification.reports.calibration import calibrate
from mnist_classification.reports.history import write_history
from mnist_classification.reports.live import StageLive

PREPARED = Path("data/prepared")
MODEL = Path("models/model.npz")
HISTORY = Path("plots/history.csv")
METRICS = Path("metrics/train.json")
LIVE = Path("dvclive/train")
#: history column -> DVCLive metric name (dvclive/train/plots/metrics/NAME.tsv, metrics.json keys)
LIVE_METRICS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "val_loss": "val/loss",
                "val_accuracy": "val/accuracy", "lr": "lr"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a network on data/prepared.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (its train section)")
    parser.add_argument("--seed", type=int, default=None, help="train.seed to use instead of the file's")
    parser.add_argument("--outputs", type=Path, default=Path("."), metavar="DIR",
                        help=f"write {MODEL}, {HISTORY}, {METRICS} and {LIVE}/ under DIR")
    args = parser.parse_args()
    if args.seed is not None and args.seed < 0:
        raise PipelineError(f"--seed is {args.seed}; expected a seed >= 0")
    return args


def main() -> None:
    args = parse_args()
    p = load_params(args.params)["train"]
    if args.seed is not None:
        p["seed"] = args.seed
    model, history, metrics, live_dir = (args.outputs / path for path in (MODEL, HISTORY, METRICS, LIVE))
    meta = load_meta(PREPARED / "meta.json")
    mean, std = meta["mean"], meta["std"]
    train_u8, train_labels = load_prepared(PREPARED / "train.npz")
    val_u8, val_labels = load_prepared(PREPARED / "val.npz")
    train_images, val_images = standardise(train_u8, mean, std), standardise(val_u8, mean, std)

    check_training_memory(p, train_images.shape[1:], len(meta["classes"]))
    network = build_network(p, train_images.shape[1:], meta["classes"], mean, std)
    optimizer = make_optimizer(p["optimizer"], p["lr"], p["momentum"], p["weight_decay"])
    schedule = Schedule(p["schedule"], p["lr"], p["epochs"], p["warmup_epochs"], p["step_epochs"], p["gamma"])
    augment = Augmenter.from_params(p["augment"], np.random.default_rng([p["seed"], 3]),
                                    standardised_black(mean, std))

    # A diverging run overflows before train() notices the loss; its TrainingDiverged is the one message.
    # An error or Ctrl-C anywhere in the block puts back the previous run's dvclive/train/ files.
    with StageLive(live_dir) as live:
        def log_epoch(row: dict) -> None:
            live.step = row["epoch"]
            for column, name in LIVE_METRICS.items():
                live.log_metric(name, float(f"{row[column]:.6g}"))
            live.next_step()

        with np.errstate(over="ignore", invalid="ignore"):
            result = train(network, optimizer, schedule, train_images, train_labels, val_images, val_labels,
                           p["epochs"], p["batch_size"], p["patience"], np.random.default_rng([p["seed"], 2]),
                           augment=augment, progress=True, on_epoch_end=log_epoch,
                           label_smoothing=p["label_smoothing"])

        best = result.history[result.best_epoch - 1]
        mirror, val_logits = {}, None
        if p["mirror_average"]:
            mirror["mirror_average"], val_logits = choose_mirror_average(network, val_images, val_labels)
        calibration = {"temperature": 1.0}
        if p["calibrate"]:
            scaling = calibrate(network.predict_logits(val_images) if val_logits is None else val_logits,
                                val_labels)
            network.temperature = scaling.temperature
            calibration = scaling.summary()
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with atomic.all_or_nothing():  # the model, its history and its metrics change together
            network.save(model)
            write_history(history, result.history)
            atomic.write_json(metrics, {
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "stopped_early": result.stopped_early,
                "train_loss": round(best["train_loss"], 6),
                "train_accuracy": round(best["train_accuracy"], 6),
                "val_loss": round(best["val_loss"], 6),
                "val_accuracy": round(best["val_accuracy"], 6),
                "parameters": network.count_parameters(),
                "train_seconds": round(result.seconds, 2),
                "samples_per_second": round(result.samples_seen / result.seconds, 1),
                "peak_memory_mib": round(peak_kib / 1024, 1),
                "calibration": calibration,
                **mirror,
                "environment": numerical_environment(),
            })
    print(f"train: best epoch {result.best_epoch} val_accuracy={best['val_accuracy']:.4f}, "
          f"temperature {network.temperature:g}, {result.seconds:.1f}s; wrote {model}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, "train", memory_hint="choose smaller train.hidden, train.cnn.channels or train.batch_size")
