"""Accuracy of ``predict`` on digit images as users make them, next to the model's own accuracy.

MNIST test digits (never trained on) are rendered as image files the ways
users' images arrive - tight and loose crops, off-centre, both polarities,
thick and thin strokes, low resolution enlarged by nearest-neighbour and by
bicubic, JPEG artefacts, uneven lighting on textured paper, small rotations, a
coloured photo background - and each rendering's files go through the whole
``predict`` command (file decoding, the photo preprocessing, the model) in one
run. Its accuracy (a refused image counts as wrong) is set against the model's
accuracy on the very same digits given as MNIST's own 28x28 arrays:

    python bench/bench_predict.py                          # models/model.npz, 1000 digits per rendering
    python bench/bench_predict.py --digits 200 --keep /tmp/corpus   # keep the rendered files

Every rendering uses the same digits (a seeded sample of the test set) and its
own seeded random numbers, so the table is reproducible.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from mnist_classification.data.idx import read_idx_gz
from mnist_classification.infra.errors import run_cli
from mnist_classification.tools import predict

#: The shared real data next to the project (../shared, as in the tests); --data picks another folder.
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
Render = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, str]]


# --------------------------------------------------------------------------- drawing helpers
# A digit is its coverage: float32 (H, W) in [0, 1], MNIST pixel / 255 (1 = ink).


def _pil(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values * 255), 0, 255).astype(np.uint8))


def _float(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


def enlarge(coverage: np.ndarray, factor: float, resample: int = Image.BICUBIC) -> np.ndarray:
    h, w = coverage.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return _float(_pil(coverage).resize(size, resample))


def tight(coverage: np.ndarray) -> np.ndarray:
    """Cropped to the bounding box of every pixel with any ink."""
    rows, cols = np.nonzero(coverage.any(axis=1))[0], np.nonzero(coverage.any(axis=0))[0]
    return coverage[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def place(coverage: np.ndarray, height: int, width: int, top: int, left: int) -> np.ndarray:
    out = np.zeros((height, width), np.float32)
    h, w = coverage.shape
    out[top:top + h, left:left + w] = coverage
    return out


def paint(coverage: np.ndarray, paper, ink) -> np.ndarray:
    """Ink over paper (scalars, (3,) colours or (H, W[, 3]) images): grey (H, W) or RGB (H, W, 3) in [0, 1]."""
    paper, ink = np.asarray(paper, np.float32), np.asarray(ink, np.float32)
    if paper.ndim == 3 or ink.ndim == 1:
        coverage = coverage[..., None]
    return paper * (1 - coverage) + ink * coverage


def noisy(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + rng.normal(0, sigma, image.shape).astype(np.float32), 0, 1)


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int) -> np.ndarray:
    """A low-frequency random field in [0, 1]: cells x cells random values enlarged by bicubic."""
    h, w = shape
    return _float(_pil(rng.uniform(0, 1, (cells, cells))).resize((w, h), Image.BICUBIC))


def on_paper(coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark pen on light paper with a little sensor noise."""
    return noisy(paint(coverage, rng.uniform(0.8, 0.97), rng.uniform(0.05, 0.25)), 0.02, rng)


# --------------------------------------------------------------------------- renderings
# Each maps a digit's coverage (28, 28) and a random generator to (image in [0, 1], file suffix).


def tight_dark(c, rng):
    return 1 - enlarge(tight(c), 8), "png"


def tight_light(c, rng):
    return enlarge(tight(c), 5, Image.BILINEAR), "png"


def loose(c, rng):
    d = enlarge(tight(c), rng.uniform(4, 7))
    h, w = d.shape
    height, width = int(h * rng.uniform(1.8, 3)), int(max(w, h) * rng.uniform(1.8, 3))
    return on_paper(place(d, height, width, (height - h) // 2, (width - w) // 2), rng), "png"


def off_centre(c, rng):
    d = enlarge(tight(c), rng.uniform(4, 7))
    h, w = d.shape
    height, width = int(h * rng.uniform(2, 3)), int(h * rng.uniform(2.5, 4))
    top = int(rng.choice([rng.uniform(0, 0.1), rng.uniform(0.9, 1)]) * (height - h))
    left = int(rng.choice([rng.uniform(0, 0.1), rng.uniform(0.9, 1)]) * (width - w))
    return on_paper(place(d, height, width, top, left), rng), "png"


def light_on_dark(c, rng):
    d = enlarge(c, rng.uniform(4, 7), Image.BILINEAR)
    return noisy(paint(d, rng.uniform(0.0, 0.3), rng.uniform(0.75, 1.0)), 0.03, rng), "png"


def thick(c, rng):
    d = _float(_pil(enlarge(c, 8)).filter(ImageFilter.MaxFilter(int(rng.choice([7, 9, 11])))))
    return on_paper(d, rng), "png"


def thin(c, rng):
    d = _float(_pil(enlarge(c, 8)).filter(ImageFilter.MinFilter(int(rng.choice([5, 7])))))
    return on_paper(d, rng), "png"


def _low_resolution(c, rng):
    """The digit as a 14, 16 or 20 pixel square grey image (area-averaged), and that size."""
    size = int(rng.choice([14, 16, 20]))
    return _float(_pil(c).resize((size, size), Image.BOX)), size


def low_res_nearest(c, rng):
    small, size = _low_resolution(c, rng)
    return 1 - enlarge(small, 64 / size, Image.NEAREST), "png"


def low_res_bicubic(c, rng):
    small, size = _low_resolution(c, rng)
    return 1 - enlarge(small, 128 / size, Image.BICUBIC), "png"


def jpeg(c, rng):
    return noisy(paint(enlarge(c, rng.uniform(3, 6)), 0.9, 0.15), 0.02, rng), f"jpg:{int(rng.integers(10, 31))}"


def uneven_light(c, rng):
    d = enlarge(c, rng.uniform(5, 8))
    h, w = d.shape
    d = place(d, h + 2 * (h // 3), w + 2 * (w // 3), h // 3, w // 3)
    height, width = d.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x / width + np.sin(angle) * y / height
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    light = 1 - rng.uniform(0.3, 0.5) * ramp  # a shadow across the page
    paper = light * (0.85 + 0.1 * smooth_field((height, width), rng, 6))  # and its texture
    return noisy(paint(d, paper, 0.12 * light), 0.03, rng), "png"


def rotated(c, rng):
    angle = rng.choice([-1, 1]) * rng.uniform(5, 12)
    d = _float(_pil(enlarge(c, 6)).rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=0))
    return on_paper(d, rng), "png"


def colour_photo(c, rng):
    d = enlarge(tight(c), rng.uniform(4, 7))
    h, w = d.shape
    height, width = int(h * rng.uniform(1.6, 2.5)), int(max(h, w) * rng.uniform(1.6, 2.5))
    coverage = place(d, height, width, (height - h) // 2 + int(rng.integers(-(h // 5), h // 5 + 1)),
                     (width - w) // 2)
    field = np.stack([smooth_field((height, width), rng, 4) for _ in range(3)], axis=2)
    paper = rng.uniform(0.45, 0.95, 3) * (0.7 + 0.3 * field)  # a coloured, unevenly lit surface
    ink = np.array(rng.choice([[0.05, 0.05, 0.08], [0.1, 0.15, 0.55], [0.55, 0.05, 0.05]]))  # black, blue, red
    return noisy(paint(coverage, paper, ink), 0.03, rng), "jpg:85"


RENDERINGS: dict[str, Render] = {
    "tight crop, dark on white, 8x bicubic": tight_dark,
    "tight crop, light on dark, 5x bilinear": tight_light,
    "loose crop on paper": loose,
    "off-centre, near a corner": off_centre,
    "light on dark (chalkboard), noisy": light_on_dark,
    "thick strokes (marker)": thick,
    "thin strokes (fine pen)": thin,
    "14-20 px, nearest-neighbour to 64 px": low_res_nearest,
    "14-20 px, bicubic to 128 px": low_res_bicubic,
    "JPEG quality 10-30": jpeg,
    "uneven light, paper texture": uneven_light,
    "rotated 5-12 degrees": rotated,
    "coloured photo background (JPEG)": colour_photo,
}


def save(image: np.ndarray, kind: str, stem: Path) -> Path:
    """Write a [0, 1] grey or RGB image as 8-bit PNG, or JPEG when ``kind`` is ``jpg:<quality>``."""
    pixels = _pil(image)
    if kind.startswith("jpg"):
        path = stem.with_suffix(".jpg")
        pixels.save(path, format="JPEG", quality=int(kind.split(":")[1]))
    else:
        path = stem.with_suffix(".png")
        pixels.save(path, format="PNG")
    return path


# --------------------------------------------------------------------------- measuring


def sample_digits(count: int, seed: int, data: Path = MNIST) -> tuple[np.ndarray, np.ndarray]:
    """``count`` MNIST test images uint8 (count, 28, 28) and labels, drawn without replacement."""
    images = read_idx_gz(data / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_gz(data / "t10k-labels-idx1-ubyte.gz")
    chosen = np.random.default_rng(seed).choice(len(images), count, replace=False)
    return images[chosen], labels[chosen]


def run_predict(model: Path, paths: list[Path]) -> list[dict]:
    """The ``predict`` command (``--json``) run in-process on ``paths``: one entry per file."""
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    args = parser.parse_args(["--json", "--model", str(model), *map(str, paths)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        predict.run(args)
    return json.loads(out.getvalue())["inputs"]


def measure(model: Path, digits: int = 1000, seed: int = 0, data: Path = MNIST, keep: Path | None = None,
            only: list[str] | None = None) -> list[dict]:
    """One row per rendering: accuracy of the predict path, the model's own on the same 28x28 digits, refusals."""
    images, labels = sample_digits(digits, seed, data)
    network = predict.load_model(model)
    own = predict.classify(network, images).argmax(axis=1) == labels
    classes = np.array(network.classes)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, (name, render) in enumerate(RENDERINGS.items()):
            if only and name not in only:
                continue
            folder = (keep or Path(tmp)) / f"{number:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, number])
            paths = [save(*render(image.astype(np.float32) / 255, rng), folder / f"{i:05d}-{label}")
                     for i, (image, label) in enumerate(zip(images, labels))]
            entries = run_predict(model, paths)
            refused = [entry for entry in entries if "error" in entry]
            predicted = np.array([entry.get("predicted", "") for entry in entries])
            correct = predicted == classes[labels]
            rows.append({"rendering": name, "digits": digits, "predict": float(correct.mean()),
                         "model": float(own.mean()), "refused": len(refused),
                         "refusals": [entry["error"] for entry in refused[:3]]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| rendering | predict | model on 28x28 | difference | refused |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['rendering']} | {row['predict']:.1%} | {row['model']:.1%} | "
                     f"{100 * (row['predict'] - row['model']):+.1f} | {row['refused']} of {row['digits']} |")
    overall = np.mean([row["predict"] for row in rows])
    lines.append(f"| **all renderings** | **{overall:.1%}** | {rows[0]['model']:.1%} | "
                 f"{100 * (overall - rows[0]['model']):+.1f} | {sum(r['refused'] for r in rows)} of "
                 f"{sum(r['digits'] for r in rows)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/model.npz"))
    parser.add_argument("--digits", type=int, default=1000, help="MNIST test digits per rendering")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=MNIST, help="folder with t10k-*-ubyte.gz")
    parser.add_argument("--keep", type=Path, default=None, help="keep the rendered images in this folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = measure(args.model, args.digits, args.seed, args.data, args.keep)
    print(table(rows))
    for row in rows:
        for message in row["refusals"]:
            print(f"refused ({row['rendering']}): {message}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main, "bench_predict")  # a missing model or data folder is one line, not a traceback
