"""``predict``: classify your own digit images, or a batch of MNIST-style arrays, with a trained model.

Inputs, recognised by their name (and checked by their content):

- Images (``.png``, ``.jpg``/``.jpeg``; anything else Pillow decodes also
  works): one digit per image, in any size, dark-on-light or light-on-dark.
  Each goes through :func:`mnist_classification.tools.digit_image.prepare_digit`
  (grayscale, polarity, crop, stroke width, 20x20 box, centre of mass in
  28x28) and the result is printed: predicted class, its probability and the
  top three. ``--show`` writes that 28x28 model input next to the image.
- Batches, written to a CSV (``--output``, columns index, predicted,
  probability, top3) with one row per image:

  - IDX image files (``.idx``, ``*-ubyte``, either optionally ``.gz``):
    uint8 (N, 28, 28), as in MNIST.
  - ``.npy`` arrays (loaded with ``allow_pickle=False``) of shape (N, 28, 28)
    or a single (28, 28): integer pixels 0..255, or float pixels, read as
    0..1 when no value exceeds 1 and as 0..255 otherwise (values must be
    finite and within 0..255).

  Batch images are used as they are - already MNIST-like: 28x28, white digit
  on black, centred - only the model's normalisation is applied.

Every image, whatever its source, is standardised with the model's own mean
and standard deviation (:func:`mnist_classification.data.preprocessing.standardise`)
and classified with :meth:`Network.predict_proba`, so MLP and CNN models work
alike. Several ``--model`` files classify as a committee
(:class:`mnist_classification.nn.committee.Committee`): the average of their
probabilities; they must agree on input shape, classes and normalisation. One
model is a committee of one. A committee file (``--model committee.json``, the
committee pipeline's committee/models/committee.json) names its members and holds
the committee's temperature T: its probabilities are softmax(log(average) / T),
as the ensemble stage computes them; with model files, T = 1.

Every input gets an entry (:mod:`mnist_classification.tools.predict_report`),
in order, as soon as its chunk (``CHUNK`` images) is classified: its result, or
the error (naming the file) that kept it from being read or classified, and
the other inputs go on. :func:`run` returns 0 when all inputs were classified
and 1 otherwise; usage and model problems raise :class:`PipelineError` (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mnist_classification.data.idx import gunzip, parse_idx
from mnist_classification.data.preprocessing import standardise
from mnist_classification.infra import atomic
from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.npz import npy_file_header
from mnist_classification.nn.committee import Committee, read_committee_file
from mnist_classification.nn.network import Network, load_network
from mnist_classification.tools.digit_image import SIZE, prepare_digit
from mnist_classification.tools.predict_report import (
    JsonReport,
    Prediction,
    TextReport,
    batch_entry,
    csv_row,
    error_entry,
    image_entry,
)

DEFAULT_MODEL = Path("models/model.npz")
#: A --model path ending so is a committee file (see :mod:`mnist_classification.nn.committee`).
COMMITTEE_SUFFIX = ".json"
DEFAULT_OUTPUT = Path("predictions.csv")
CSV_COLUMNS = ("index", "predicted", "probability", "top3")
TOP_K = 3
#: Images read, prepared and classified together: memory stays bounded however many files are given.
CHUNK = 256
#: Images of a .npy/IDX batch classified at a time.
BATCH_CHUNK = 4096
BATCH_KINDS = ("npy", "idx")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
#: Refuse decoded images above this many pixels (Pillow's decompression-bomb guard).
MAX_IMAGE_PIXELS = 100_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"
_EXPECTED_BATCH = "expected uint8 (N, 28, 28) MNIST-style images"


class ModelError(PipelineError):
    """The model, not an input, is at fault: the whole run stops."""


# --------------------------------------------------------------------------- inputs


def input_kind(path: Path) -> str:
    """"image", "npy" or "idx" for ``path``, from its suffix or, failing that, its first bytes."""
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix in IMAGE_SUFFIXES:  # before the IDX name patterns: "idx3-sketch.png" is an image
        return "image"
    stem = name.removesuffix(".gz")
    if stem.endswith(".idx") or "-ubyte" in stem or "idx1" in stem or "idx3" in stem:
        return "idx"
    head = _read_head(path)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_GZIP_MAGIC) or head[:3] == b"\x00\x00\x08":
        return "idx"
    return "image"


def _read_head(path: Path, size: int = 8) -> bytes:
    _check_file(path)
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise PipelineError(f"{path} not found; expected an image (PNG/JPEG), a .npy array or an IDX file")
    if not path.is_file():
        raise PipelineError(f"{path} is not a file; expected an image (PNG/JPEG), a .npy array or an IDX file")


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror or exc}") from None


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1..8) so the array is upright, as a photo viewer shows it."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, 1)
    return array


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file with Pillow into a NumPy array (H, W[, C]), upright per its EXIF tag.

    Pillow only decodes; every conversion (grayscale, alpha) happens in NumPy
    (:func:`mnist_classification.tools.digit_image.to_grayscale`). Palette and other
    colour modes are expanded to RGB(A); 32-bit integer images become uint16.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    expected = "expected a PNG or JPEG image of one digit"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
            try:
                with Image.open(path) as img:
                    img.seek(0)  # first frame of an animation
                    orientation = int(img.getexif().get(0x0112, 1) or 1)
                    mode = img.mode
                    if mode == "P":
                        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                    elif mode == "PA":
                        img = img.convert("RGBA")
                    elif mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
                        img = img.convert("RGBA" if "A" in mode or "a" in mode else "RGB")
                    array = np.asarray(img)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except UnidentifiedImageError:
        raise PipelineError(f"{path} {_undecodable(path)}; {expected}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PipelineError(f"{path} is too large (more than {MAX_IMAGE_PIXELS} pixels); {expected}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise PipelineError(f"{path} could not be decoded ({exc}); the file is truncated or corrupt; "
                            f"{expected}") from None
    if array.dtype.kind in "iu" and array.dtype.itemsize > 2:
        array = np.clip(array, 0, 65535).astype(np.uint16)
    return _orient(array, orientation)


def _undecodable(path: Path) -> str:
    """Why Pillow could not identify ``path``: empty file, empty PNG, or not an image at all."""
    head = _read_head(path, 24)
    if not head:
        return "is an empty file (0 bytes)"
    if head.startswith(_PNG_MAGIC) and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return f"is an empty image ({width}x{height} pixels)"
        return "is a damaged PNG file"
    return "is not an image Pillow can decode"


def prepare_image(path: str | Path, stroke: bool = True) -> np.ndarray:
    """Read one digit image and turn it into MNIST-like uint8 (28, 28); errors name the file.

    ``stroke=False`` keeps the strokes' width (see :func:`digit_image.normalise_stroke`).
    """
    path = Path(path)
    array = read_image(path)
    try:
        return prepare_digit(array, stroke=stroke)
    except PipelineError as exc:
        raise PipelineError(f"{path}: {exc}") from None


def _as_pixels(array: np.ndarray, path: Path) -> np.ndarray:
    """uint8 pixels 0..255 from an integer (0..255) or float (0..1 or 0..255) array."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise PipelineError(f"{path}: integer pixels range over {low}..{high}; {_EXPECTED_BATCH} "
                                "(integers 0..255)")
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise PipelineError(f"{path}: holds NaN or infinite values; expected float pixels in 0..1 or 0..255")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise PipelineError(f"{path}: float pixels range over {low:g}..{high:g}; expected 0..1 or 0..255")
        scale = 255.0 if high <= 1.0 else 1.0
        return np.rint(array.astype(np.float64) * scale).astype(np.uint8)
    raise PipelineError(f"{path}: array has dtype {array.dtype}; {_EXPECTED_BATCH} (or floats 0..1 / 0..255)")


def load_npy(path: str | Path) -> np.ndarray:
    """Images uint8 (N, 28, 28) from a ``.npy`` file (see the module docstring for accepted dtypes)."""
    path = Path(path)
    head = _read_head(path)
    if head.startswith(_ZIP_MAGIC):
        raise PipelineError(f"{path} is an .npz archive (a model file?); expected a .npy array of images")
    if not head.startswith(_NPY_MAGIC):
        raise PipelineError(f"{path} is not a .npy file (it does not start with the NumPy magic); "
                            f"expected an array saved with numpy.save")
    try:
        header = npy_file_header(path)  # shape and size checked before anything is allocated
        if header.dtype.hasobject:
            raise PipelineError(f"{path} holds pickled Python objects, which are refused for safety; "
                                f"expected a numeric array of images")
        shape = (1, *header.shape) if header.shape == (SIZE, SIZE) else header.shape
        if len(shape) != 3 or shape[1:] != (SIZE, SIZE) or shape[0] == 0:
            raise PipelineError(f"{path}: array has shape {header.shape}; {_EXPECTED_BATCH} "
                                "(or a single (28, 28) image)")
        array = np.load(path, allow_pickle=False).reshape(shape)
    except ValueError as exc:
        raise PipelineError(f"{path} is not a readable .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise PipelineError(f"{path} is truncated or corrupt ({exc})") from None
    return _as_pixels(array, path)


def load_idx(path: str | Path) -> np.ndarray:
    """Images uint8 (N, 28, 28) from an IDX file, gzip-compressed or not."""
    path = Path(path)
    data = _read_bytes(path)
    if data[:2] == _GZIP_MAGIC:
        data = gunzip(data, str(path))
    images = parse_idx(data, str(path))
    if images.ndim == 1:
        raise PipelineError(f"{path} is an IDX label file (1-D); expected an image file, {_EXPECTED_BATCH}")
    if images.shape[1:] != (SIZE, SIZE) or images.shape[0] == 0:
        raise PipelineError(f"{path}: IDX images have shape {images.shape}; {_EXPECTED_BATCH}")
    return images


def load_batch(path: str | Path) -> np.ndarray:
    """uint8 (N, 28, 28) images from a ``.npy`` or IDX file."""
    path = Path(path)
    return load_npy(path) if input_kind(path) == "npy" else load_idx(path)


# --------------------------------------------------------------------------- model


def load_model(path: str | Path) -> Network:
    """Load a model written by the train stage and check it takes 28x28 images."""
    network = load_network(path)
    if tuple(network.input_shape) != (SIZE, SIZE):
        raise PipelineError(f"model file {path} expects {network.input_shape} inputs; predict needs a model "
                            f"trained on 28x28 images")
    if len(network.classes) < 1:
        raise PipelineError(f"model file {path} has no classes")
    return network


def load_models(paths: list[Path]) -> Committee:
    """Load each model file (:func:`load_model`) into one committee (a single model is a committee of one,
    T = 1), or the members and temperature of a committee file (``.json``), which must be the only path."""
    committee_files = [path for path in paths if path.suffix.lower() == COMMITTEE_SUFFIX]
    if committee_files and len(paths) > 1:
        raise PipelineError(f"{committee_files[0]} is a committee file; pass it as the only --model, or pass "
                            "model files (.npz) only")
    if committee_files:
        members, temperature = read_committee_file(paths[0])
        return Committee([load_model(path) for path in members], members, temperature)
    return Committee([load_model(path) for path in paths], paths)


def classify(network: Network | Committee, images_u8: np.ndarray, model: str | Path = "the model") -> np.ndarray:
    """Class probabilities (N, K) for uint8 images (N, 28, 28), using the model's normalisation."""
    with np.errstate(over="ignore", invalid="ignore"):
        probabilities = network.predict_proba(standardise(images_u8, network.mean, network.std))
    if not np.all(np.isfinite(probabilities)):
        raise ModelError(f"model file {model} gives NaN or infinite probabilities (its weights overflow); "
                         "retrain it with a smaller train.lr")
    return probabilities


def top_predictions(probabilities: np.ndarray, classes: list[str], k: int = TOP_K) -> list[Prediction]:
    """The top ``k`` classes (most probable first; ties to the lower index) of each row."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    top_p = np.take_along_axis(probabilities, order, axis=1)
    return [Prediction(classes[row[0]], float(p[0]), [(classes[c], float(q)) for c, q in zip(row, p)])
            for row, p in zip(order.tolist(), top_p.tolist())]


# --------------------------------------------------------------------------- outputs


def encode_png(image_u8: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a uint8 (H, W) array (zlib + CRC in NumPy/stdlib; no Pillow)."""
    image = np.ascontiguousarray(image_u8, dtype=np.uint8)
    h, w = image.shape

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = np.concatenate([np.zeros((h, 1), np.uint8), image], axis=1)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (_PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


def preview_paths(paths: list[Path]) -> list[Path]:
    """``<stem>.preprocessed.png`` next to each input (``<name>.preprocessed.png`` when stems collide)."""
    candidates = [path.with_name(f"{path.stem}.preprocessed.png") for path in paths]
    counts: dict[Path, int] = {}
    for candidate in candidates:
        counts[candidate] = counts.get(candidate, 0) + 1
    return [path.with_name(f"{path.name}.preprocessed.png") if counts[candidate] > 1 else candidate
            for path, candidate in zip(paths, candidates)]


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", type=Path,
                        help="digit images (PNG/JPEG, one digit each), or one batch file: IDX (.idx, *-ubyte, "
                             "optionally .gz) or .npy (N, 28, 28) with pixels uint8 0..255 or float 0..1 "
                             "(or 0..255 when any value exceeds 1)")
    parser.add_argument("--model", type=Path, action="append", metavar="PATH",
                        help=f"model file written by the train stage (default: {DEFAULT_MODEL}); given several "
                             "times, the models classify as a committee: their probabilities are averaged; or "
                             "one committee file (.json, e.g. committee/models/committee.json): its members "
                             "and temperature")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    parser.add_argument("--show", action="store_true",
                        help="write each image's preprocessed 28x28 model input next to it as "
                             "<input stem>.preprocessed.png")
    parser.add_argument("--keep-stroke-width", action="store_true",
                        help="leave the stroke width as drawn (by default hairlines are thickened and "
                             "marker strokes thinned into MNIST's range, a step MNIST itself did not need)")
    parser.add_argument("--output", type=Path, default=None, metavar="PATH",
                        help=f"CSV for batch predictions (default: {DEFAULT_OUTPUT}); columns "
                             f"{','.join(CSV_COLUMNS)}")


def _kind(path: Path) -> tuple[str | None, str | None]:
    """(kind, None) for a readable input (see :func:`input_kind`), (None, message) for one that is not."""
    try:
        return input_kind(path), None
    except PipelineError as exc:
        return None, str(exc)


def predict_images(network: Network | Committee, items: list[tuple[Path, str | None]],
                   previews: dict[Path, Path], stroke: bool, model: str) -> list[dict]:
    """Entries for image inputs ``(path, error or None)``, classified together; unreadable ones get an error."""
    entries: list[dict | None] = []
    prepared: list[tuple[int, Path, np.ndarray]] = []
    for path, error in items:
        if error is None:
            try:
                prepared.append((len(entries), path, prepare_image(path, stroke=stroke)))
            except PipelineError as exc:
                error = str(exc)
        entries.append(None if error is None else error_entry(path, error))
    if prepared:
        pixels = np.stack([image for _, _, image in prepared])
        predictions = top_predictions(classify(network, pixels, model), network.classes)
        for (slot, path, image), pred in zip(prepared, predictions):
            preview = previews.get(path)
            try:
                if preview is not None:
                    atomic.write_bytes(preview, encode_png(image))
                entries[slot] = image_entry(path, pred, preview)
            except PipelineError as exc:
                entries[slot] = error_entry(path, str(exc))
    return entries


def predict_batch(network: Network | Committee, path: Path, output: Path, model: str) -> dict:
    """Classify a .npy/IDX batch in chunks of ``BATCH_CHUNK``, streaming the CSV to ``output``; its entry."""
    try:
        images = load_batch(path)
        counts: dict[str, int] = {}
        with atomic.atomic_open(output) as handle:
            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for start in range(0, len(images), BATCH_CHUNK):
                predictions = top_predictions(classify(network, images[start:start + BATCH_CHUNK], model),
                                              network.classes)
                for index, pred in enumerate(predictions, start):
                    counts[pred.predicted] = counts.get(pred.predicted, 0) + 1
                    writer.writerow(csv_row(index, pred))
            text.flush()
            text.detach()
    except ModelError:
        raise
    except PipelineError as exc:
        return error_entry(path, str(exc))
    return batch_entry(path, output, counts)


def _groups(items: list[tuple[Path, str | None, str | None]]) -> Iterator[list[tuple[Path, str | None, str | None]]]:
    """The inputs in order: runs of at most ``CHUNK`` images (or unreadable inputs), and each batch file alone."""
    group: list[tuple[Path, str | None, str | None]] = []
    for item in items:
        if item[1] in BATCH_KINDS:
            if group:
                yield group
                group = []
            yield [item]
        else:
            group.append(item)
            if len(group) == CHUNK:
                yield group
                group = []
    if group:
        yield group


def run(args: argparse.Namespace) -> int:
    """Classify ``args.inputs`` with ``args.model`` (one model, or a committee), printing an entry per input
    as it goes (see :mod:`predict_report`); write previews and the batch CSV. Returns the exit status: 0 when
    every input was classified, 1 when some were not (each has an error entry); usage and model errors raise."""
    items = [(path, *_kind(path)) for path in args.inputs]
    batch_paths = [path for path, kind, _ in items if kind in BATCH_KINDS]
    if len(batch_paths) > 1:
        raise PipelineError(f"{len(batch_paths)} batch files given ({', '.join(map(str, batch_paths))}); "
                            "expected at most one .npy/IDX file per run (each writes its own CSV)")
    if args.output is not None and not batch_paths:
        raise PipelineError("--output is for batch input (.npy or IDX files); images are printed instead")
    paths = args.model or [DEFAULT_MODEL]
    network = load_models(paths)
    model = " + ".join(map(str, paths))  # names the model in errors
    image_paths = [path for path, kind, _ in items if kind == "image"]
    previews = dict(zip(image_paths, preview_paths(image_paths))) if args.show else {}
    output = args.output if args.output is not None else DEFAULT_OUTPUT
    report = JsonReport(paths) if args.json else TextReport()
    for group in _groups(items):
        path, kind, _ = group[0]
        if kind in BATCH_KINDS:
            report.add(predict_batch(network, path, output, model))
            continue
        entries = predict_images(network, [(path, error) for path, _, error in group], previews,
                                 not args.keep_stroke_width, model)
        for entry in entries:
            report.add(entry)
    report.close()
    return 1 if report.errors else 0
