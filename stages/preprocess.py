"""Stage preprocess: stratified train/validation split and normalisation statistics.

Writes data/prepared/{train,val,test}.npz (uint8 images (N, 28, 28), uint8 labels (N,))
and data/prepared/meta.json (dataset, classes, mean, std, split settings, counts).
"""

import json
from pathlib import Path

import numpy as np

from mnist_classification.data.datasets import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)
from mnist_classification.data.idx import NUM_CLASSES, load_images_labels
from mnist_classification.data.preprocessing import (
    normalisation_stats,
    stratified_split,
)
from mnist_classification.infra.atomic import all_or_nothing, save_npz, write_json
from mnist_classification.infra.errors import PipelineError, run_cli
from mnist_classification.infra.params import load_params

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/prepared")


def read_dataset_info(params: dict) -> dict:
    """data/raw/dataset.json, checked against params fetch.dataset."""
    path = RAW_DIR / "dataset.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        name, classes = info["name"], list(info["classes"])
    except FileNotFoundError:
        raise PipelineError(f"{path} not found; run the fetch stage first (dvc repro fetch)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path} is unreadable or malformed ({exc}); run the fetch stage again") from None
    if name != params["fetch"]["dataset"]:
        raise PipelineError(
            f"{RAW_DIR} holds {name!r} but params.yaml fetch.dataset is {params['fetch']['dataset']!r}; "
            "run the fetch stage again (dvc repro fetch)"
        )
    return {"name": name, "classes": classes}


def main() -> None:
    """Split, compute statistics, write the prepared files."""
    params = load_params("params.yaml")
    seed, val_fraction = params["preprocess"]["seed"], params["preprocess"]["val_fraction"]
    info = read_dataset_info(params)
    images, labels = load_images_labels(RAW_DIR / f"{TRAIN_IMAGES}.gz", RAW_DIR / f"{TRAIN_LABELS}.gz")
    test_images, test_labels = load_images_labels(RAW_DIR / f"{TEST_IMAGES}.gz", RAW_DIR / f"{TEST_LABELS}.gz")
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    splits = {
        "train": (images[train_idx], labels[train_idx]),
        "val": (images[val_idx], labels[val_idx]),
        "test": (test_images, test_labels),
    }
    mean, std = normalisation_stats(splits["train"][0])  # training split only
    with all_or_nothing():  # the three splits and their statistics change together
        for name, (x, y) in splits.items():
            save_npz(OUT_DIR / f"{name}.npz", {"images": x, "labels": y}, compress=True)
        write_json(OUT_DIR / "meta.json", {
            "dataset": info["name"],
            "classes": info["classes"],
            "mean": mean,
            "std": std,
            "val_fraction": val_fraction,
            "seed": seed,
            "counts": {name: int(len(y)) for name, (_, y) in splits.items()},
            "class_counts": {name: np.bincount(y, minlength=NUM_CLASSES).tolist()
                             for name, (_, y) in splits.items()},
        })


if __name__ == "__main__":
    run_cli(main, "preprocess")
