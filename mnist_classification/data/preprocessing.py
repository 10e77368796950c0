"""Train/validation split, normalisation statistics and the prepared-data reader.

Prepared files keep uint8 images (compact, exact); standardisation to float32
is a pure function applied when the data are loaded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from mnist_classification.data.idx import NUM_CLASSES, check_images_labels
from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.npz import read_npz

_STATS_CHUNK = 1 << 22  # pixels per bincount call
_REPREPROCESS = "run the preprocess stage again (dvc repro preprocess)"


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices per class: round(count_c * val_fraction) of each class go to validation.

    labels: (N,) integer class ids. Returns sorted int64 (train_idx, val_idx), disjoint
    and covering 0..N-1; deterministic for a given ``seed`` (np.random.default_rng).
    """
    labels = np.asarray(labels)
    if not 0 < val_fraction < 1:
        raise PipelineError(f"preprocess.val_fraction is {val_fraction!r}; expected a number strictly between 0 and 1")
    n = len(labels)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]  # grouped by class, random within
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    n_val = np.rint(counts * val_fraction).astype(np.int64)
    rank = np.arange(n) - np.repeat(starts, counts)  # position within its class group
    in_val = rank < np.repeat(n_val, counts)
    val_idx = np.sort(order[in_val]).astype(np.int64)
    train_idx = np.sort(order[~in_val]).astype(np.int64)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise PipelineError(
            f"preprocess.val_fraction={val_fraction} splits {n} samples into {len(train_idx)} training and "
            f"{len(val_idx)} validation samples; choose a fraction that leaves both non-empty"
        )
    return train_idx, val_idx


def normalisation_stats(train_images_u8: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of all pixels scaled to [0, 1], as Python floats.

    Exact: computed from the 256-bin pixel histogram (built in chunks of pixels, so the
    extra memory stays ~32 MB); no float copy of the images is made.
    """
    flat = np.asarray(train_images_u8, dtype=np.uint8).reshape(-1)
    hist = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, _STATS_CHUNK):  # bincount makes an int64 copy: bound it
        hist += np.bincount(flat[start:start + _STATS_CHUNK], minlength=256)
    n = int(hist.sum())
    if n == 0:
        raise PipelineError("the training split holds no pixels; cannot compute normalisation statistics")
    values = np.arange(256, dtype=np.int64)
    s1, s2 = int(hist @ values), int(hist @ values**2)  # exact integer moments
    mean = s1 / (n * 255)
    std = math.sqrt((n * s2 - s1 * s1) / (n * n * 255 * 255))  # exact numerator (Python ints)
    if not std > 0:
        raise PipelineError("all training pixels have the same value (std 0); the training images are broken")
    return mean, std


def standardise(images_u8: np.ndarray, mean: float, std: float) -> np.ndarray:
    """float32 ((x / 255) - mean) / std for uint8 images of any shape, e.g. (N, 28, 28) -> (N, 28, 28).

    Evaluated in float32 on the 256 possible pixel values, then gathered: one
    float32 output array, no float64 temporaries.
    """
    images_u8 = np.asarray(images_u8)
    if images_u8.dtype != np.uint8:
        raise TypeError(f"standardise expects uint8 images, got {images_u8.dtype}")
    table = (np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std)
    return table[images_u8]


def standardised_black(mean: float, std: float) -> float:
    """The standardised value of a black (0) pixel: what augmentation fills in outside the image."""
    return float(standardise(np.zeros(1, np.uint8), mean, std)[0])


def load_prepared(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a prepared split: uint8 images (N, 28, 28) with pixels 0..255 and uint8 labels (N,) in 0..9."""
    path = Path(path)
    arrays = read_npz(path, "prepared split", _REPREPROCESS)
    missing = {"images", "labels"} - set(arrays)
    if missing:
        raise PipelineError(f"prepared split {path} lacks array(s) {', '.join(sorted(missing))}; {_REPREPROCESS}")
    images, labels = arrays["images"], arrays["labels"]
    try:
        check_images_labels(images, labels, str(path))
    except PipelineError as exc:
        raise PipelineError(f"{exc}; {_REPREPROCESS}") from None
    return images, labels


def load_meta(path: str | os.PathLike) -> dict:
    """Read the preprocess stage's meta.json; checks what training needs from it.

    Returns the dict with ``mean`` and ``std`` (finite floats, std > 0: the
    normalisation of pixels scaled to [0, 1]) and ``classes`` (NUM_CLASSES names).
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found; {_REPREPROCESS}") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read {path} ({exc}); {_REPREPROCESS}") from None
    if not isinstance(meta, dict):
        raise PipelineError(f"{path} holds a JSON {type(meta).__name__}, not an object; {_REPREPROCESS}")
    for key in ("mean", "std"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PipelineError(f"{path}: {key!r} is {value!r}; expected a finite number; {_REPREPROCESS}")
    if not meta["std"] > 0:
        raise PipelineError(f"{path}: 'std' is {meta['std']!r}; expected a positive number; {_REPREPROCESS}")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) == NUM_CLASSES
            and all(isinstance(name, str) for name in classes)):
        raise PipelineError(f"{path}: 'classes' is {classes!r}; expected a list of {NUM_CLASSES} names; "
                            f"{_REPREPROCESS}")
    return meta
