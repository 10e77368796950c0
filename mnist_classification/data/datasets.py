"""What the pipeline knows about each dataset: files, checksums, mirrors and class names.

Pins are SHA-256 digests and sizes of the *decompressed* IDX payloads, which
are the same whichever mirror (and gzip wrapper) served them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_classification.infra.errors import PipelineError


@dataclass(frozen=True)
class FileSpec:
    """One IDX file: ``name`` without ``.gz``, decompressed ``size`` in bytes (None: unknown), its ``sha256``."""

    name: str
    size: int | None
    sha256: str

    @property
    def gz_name(self) -> str:
        """File name on mirrors and in data/raw, e.g. ``train-images-idx3-ubyte.gz``."""
        return f"{self.name}.gz"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its four files, public mirror URL prefixes (tried in order) and class names."""

    name: str
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]


TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

MNIST = DatasetSpec(
    name="mnist",
    files=(
        FileSpec(TRAIN_IMAGES, 47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        FileSpec(TRAIN_LABELS, 60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        FileSpec(TEST_IMAGES, 7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        FileSpec(TEST_LABELS, 10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    classes=tuple(str(d) for d in range(10)),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    files=(
        FileSpec(TRAIN_IMAGES, 47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        FileSpec(TRAIN_LABELS, 60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        FileSpec(TEST_IMAGES, 7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        FileSpec(TEST_LABELS, 10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}


def get_dataset(name: str, custom: dict | None = None) -> DatasetSpec:
    """The spec of dataset ``name``; for ``custom``, built from the ``fetch.custom`` params section.

    A custom dataset is any four MNIST-format IDX files with ten classes, pinned by
    the SHA-256 of each decompressed file and served only through DATASET_MIRROR.
    """
    if name == "custom":
        return _custom_dataset(custom or {})
    try:
        return DATASETS[name]
    except KeyError:
        raise PipelineError(
            f"params.yaml: fetch.dataset is {name!r}; expected one of {', '.join(DATASETS)}, custom"
        ) from None


def _custom_dataset(custom: dict) -> DatasetSpec:
    pins = custom.get("sha256", {})
    missing = [f for f in FILE_NAMES if f not in pins]
    if missing or set(pins) - set(FILE_NAMES):
        raise PipelineError(
            "params.yaml: fetch.custom.sha256 must pin exactly the four files "
            f"{', '.join(FILE_NAMES)} (SHA-256 of each decompressed file); missing {missing or 'none'}, "
            f"unexpected {sorted(set(pins) - set(FILE_NAMES)) or 'none'}"
        )
    classes = tuple(custom.get("classes", ()))
    if len(classes) != 10 or len(set(classes)) != 10:
        raise PipelineError(f"params.yaml: fetch.custom.classes is {list(classes)}; expected ten distinct names")
    return DatasetSpec("custom", tuple(FileSpec(f, None, pins[f].lower()) for f in FILE_NAMES), (), classes)
