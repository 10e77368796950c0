"""`predict`: digits drawn by the test itself, classified by a small MLP trained on real MNIST; the CLI.

The fixture model (784-256-10, two epochs of Adam on MNIST, a few seconds) is
trained once per session from /work/shared/data/mnist; tests that need it are
skipped when the data are absent.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mnist_classification import predict
from mnist_classification.errors import PipelineError
from mnist_classification.idx import encode_idx, read_idx_gz
from mnist_classification.losses import SoftmaxCrossEntropy
from mnist_classification.network import build_network
from mnist_classification.preprocessing import normalisation_stats, standardise

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
ROOT = Path(__file__).resolve().parents[1]
FONTS = ("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono")
WEIGHTS = ("normal", "bold")
POLARITIES = ("dark_on_light", "light_on_dark")
TRAIN_SAMPLES, EPOCHS, HIDDEN, DROPOUT, BATCH, LR = 60000, 2, 256, 0.2, 128, 1e-3


# --------------------------------------------------------------------------- fixtures


def _mnist(name: str) -> np.ndarray:
    return read_idx_gz(MNIST / f"{name}.gz")


_GRID_Y, _GRID_X = (g.ravel().astype(np.float32) - np.float32(13.5) for g in np.mgrid[0:28, 0:28])


def jitter(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random small affine distortions of (N, 28, 28) images, 0 = background: rotation up to 10 degrees,
    scale 0.9-1.1, shift up to 1 pixel, bilinear sampling (the usual MNIST augmentation)."""
    n = len(batch)
    angle = rng.uniform(-10, 10, (n, 1)) * (np.pi / 180)
    scale = rng.uniform(0.9, 1.1, (n, 1))
    cos, sin = (np.cos(angle) / scale).astype(np.float32), (np.sin(angle) / scale).astype(np.float32)
    shift = rng.uniform(-1, 1, (2, n, 1)).astype(np.float32)
    src_x = cos * _GRID_X + sin * _GRID_Y + (np.float32(14.5) - shift[0])  # +1 for the padding below
    src_y = cos * _GRID_Y - sin * _GRID_X + (np.float32(14.5) - shift[1])
    np.clip(src_x, 0, 29.999, out=src_x)
    np.clip(src_y, 0, 29.999, out=src_y)
    x0, y0 = src_x.astype(np.int32), src_y.astype(np.int32)
    fx, fy = src_x - x0.astype(np.float32), src_y - y0.astype(np.float32)
    padded = np.pad(batch, ((0, 0), (1, 2), (1, 2))).reshape(-1)  # 31x31 per image
    index = np.arange(n, dtype=np.int32)[:, None] * 961 + y0 * 31 + x0
    top = padded.take(index) * (1 - fx) + padded.take(index + 1) * fx
    bottom = padded.take(index + 31) * (1 - fx) + padded.take(index + 32) * fx
    return (top * (1 - fy) + bottom * fy).reshape(n, 28, 28)


def train_fixture_model(path: str | Path) -> None:
    """Train a 784-256-10 MLP (dropout 0.2, as the default params) for two epochs of Adam on the 60k MNIST
    training images with light affine jitter, and save it as the train stage saves models."""
    images = _mnist("train-images-idx3-ubyte")[:TRAIN_SAMPLES]
    labels = _mnist("train-labels-idx1-ubyte")[:TRAIN_SAMPLES].astype(np.int64)
    mean, std = normalisation_stats(images)
    params = {"model": "mlp", "hidden": [HIDDEN], "activation": "relu", "init": "he", "dropout": DROPOUT,
              "seed": 0}
    network = build_network(params, (28, 28), [str(d) for d in range(10)], mean, std)
    x = standardise(images, mean, std)
    background = np.float32(-mean / std)  # a standardised black pixel
    loss = SoftmaxCrossEntropy()
    try:
        from mnist_classification.optimizers import Adam

        optimizer = Adam(LR)

        def step():
            optimizer.update(network.trainable())
    except ImportError:  # pragma: no cover - plain SGD if the optimisers are missing
        def step():
            for p, g, _ in network.trainable():
                p -= np.float32(0.1) * g
    rng = np.random.default_rng(0)
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            inputs = jitter(x[batch] - background, rng) + background
            loss.forward(network.forward(inputs, training=True), labels[batch])
            network.backward(loss.backward())
            step()
    network.save(path)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """The fixture model (:func:`train_fixture_model`), trained once per session in a temporary folder.

    Training runs in a child process with single-threaded BLAS: these small matrix products gain
    nothing from threads, and on a busy machine BLAS threads waiting for each other cost several times
    the work itself.
    """
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST not found in {MNIST}")
    path = tmp_path_factory.mktemp("model") / "model.npz"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, test_predict; test_predict.train_fixture_model(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                            timeout=600, check=False)
    assert result.returncode == 0 and path.is_file(), result.stderr
    return path


@pytest.fixture(scope="session")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """The first 1000 MNIST test images and labels."""
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST not found in {MNIST}")
    return _mnist("t10k-images-idx3-ubyte")[:1000], _mnist("t10k-labels-idx1-ubyte")[:1000]


# --------------------------------------------------------------------------- drawing digits


def render_digit(text: str, family: str, weight: str, height: int, width: int, fontsize: float,
                 centre: tuple[float, float]) -> np.ndarray:
    """White ``text`` on black, anti-aliased by Agg: float (height, width) coverage in [0, 1]."""
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    fig.text(centre[0], centre[1], text, color="white", fontsize=fontsize, family=family, weight=weight,
             ha="center", va="center")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., 0].astype(np.float64) / 255


def draw_set(folder: Path, seed: int = 0) -> list[dict]:
    """Digits 0-9 in every font x weight x polarity, each with its own canvas, size, position, paper,
    ink colour and noise, saved alternately as PNG and JPEG. Returns one record per file."""
    rng = np.random.default_rng(seed)
    records = []
    for style, (family, weight, polarity) in enumerate(itertools.product(FONTS, WEIGHTS, POLARITIES)):
        for digit in range(10):
            height, width = [(120, 120), (160, 220), (260, 180), (90, 140)][rng.integers(4)]
            fontsize = rng.uniform(0.3, 0.65) * height * 0.72  # points at 100 dpi: digit ~ 30-65% of height
            centre = (rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.6))
            coverage = render_digit(str(digit), family, weight, height, width, fontsize, centre)[..., None]
            if polarity == "dark_on_light":  # paper with uneven light, pen ink (blueish or black)
                ramp = np.linspace(0, rng.uniform(-0.15, 0.15), width)[None, :, None]
                paper = np.clip(rng.uniform(0.75, 1.0) + ramp, 0, 1) * np.array([1.0, 0.98, 0.94])
                ink = rng.choice([np.array([0.05, 0.05, 0.05]), np.array([0.1, 0.15, 0.5])])
            else:  # chalk on a board / a screenshot of white on black
                paper = np.full((1, 1, 3), rng.uniform(0.0, 0.25))
                ink = np.full(3, rng.uniform(0.8, 1.0))
            image = paper * (1 - coverage) + ink * coverage
            image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)
            suffix = "png" if (digit + style) % 2 == 0 else "jpg"
            path = folder / f"{family.replace(' ', '')}-{weight}-{polarity}-{digit}.{suffix}"
            mpimg.imsave(path, (image * 255).round().astype(np.uint8))
            records.append({"path": path, "label": digit, "font": family, "weight": weight,
                            "polarity": polarity, "format": suffix})
    return records


def _accuracy_table(records: list[dict], correct: np.ndarray) -> str:
    lines = [f"overall {correct.mean():.1%} of {len(correct)}"]
    for key in ("font", "weight", "polarity", "format", "label"):
        values = sorted({r[key] for r in records}, key=str)
        parts = [f"{v}: {correct[[r[key] == v for r in records]].mean():.0%}" for v in values]
        lines.append(f"  by {key}: " + ", ".join(parts))
    return "\n".join(lines)


def test_rendered_digits_are_recognised(model_path, tmp_path):
    records = draw_set(tmp_path)
    network = predict.load_model(model_path)
    images = np.stack([predict.prepare_image(r["path"]) for r in records])
    assert images.shape == (len(records), 28, 28) and images.dtype == np.uint8
    labels = np.array([r["label"] for r in records])
    correct = predict.classify(network, images).argmax(axis=1) == labels
    report = _accuracy_table(records, correct)
    predicted = predict.classify(network, images).argmax(axis=1)
    confusions = sorted({f"{t}->{p}" for t, p in zip(labels, predicted) if t != p})
    print("\nrendered digits:\n" + report + "\n  mistakes: " + " ".join(confusions))
    assert correct.mean() >= 0.8, report
    # Both polarities become the same MNIST-like input: the same verdict for the same drawing.
    by_polarity = {p: correct[[r["polarity"] == p for r in records]].mean() for p in POLARITIES}
    assert min(by_polarity.values()) >= 0.7, report


def test_fixture_model_is_sound(model_path, test_digits):
    images, labels = test_digits
    network = predict.load_model(model_path)
    accuracy = (predict.classify(network, images).argmax(axis=1) == labels).mean()
    assert accuracy >= 0.92


def test_mnist_digits_survive_the_photo_preprocessing(model_path, test_digits):
    """MNIST digits themselves, inverted and enlarged like a scan, are still recognised."""
    images, labels = test_digits
    images, labels = images[:120], labels[:120]
    network = predict.load_model(model_path)
    direct = (predict.classify(network, images).argmax(axis=1) == labels).mean()
    scans = [255 - np.kron(image, np.ones((5, 5), np.uint8)) for image in images]  # 140x140, dark on light
    from mnist_classification.digit_image import prepare_digit

    prepared = np.stack([prepare_digit(scan) for scan in scans])
    again = (predict.classify(network, prepared).argmax(axis=1) == labels).mean()
    assert again >= direct - 0.05


# --------------------------------------------------------------------------- library functions


def test_top_predictions_order_and_ties():
    probs = np.array([[0.1, 0.6, 0.3], [0.4, 0.4, 0.2]], dtype=np.float32)
    first, second = predict.top_predictions(probs, ["a", "b", "c"])
    assert first.predicted == "b" and [c for c, _ in first.top] == ["b", "c", "a"]
    assert second.predicted == "a" and [c for c, _ in second.top] == ["a", "b", "c"]
    assert first.probability == pytest.approx(0.6)


def test_encode_png_round_trips_through_a_decoder(tmp_path):
    image = np.arange(28 * 28, dtype=np.uint32).reshape(28, 28).astype(np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(predict.encode_png(image))
    from PIL import Image

    with Image.open(path) as decoded:
        assert decoded.mode == "L" and decoded.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(decoded), image)


def test_npy_pixel_conventions(tmp_path):
    base = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    cases = {"u8": base, "i64": base.astype(np.int64), "unit": base / 255.0,
             "f255": base.astype(np.float32), "single": base[0]}
    for name, array in cases.items():
        np.save(tmp_path / f"{name}.npy", array)
        loaded = predict.load_batch(tmp_path / f"{name}.npy")
        expected = base[:1] if name == "single" else base
        np.testing.assert_array_equal(loaded, expected, err_msg=name)
    for name, array, needle in [("neg", -base.astype(np.int16) - 1, "0..255"),
                                ("big", base.astype(np.float32) * 2 + 1, "0..1 or 0..255"),
                                ("nan", np.full((1, 28, 28), np.nan), "NaN"),
                                ("shape", np.zeros((2, 32, 32), np.uint8), "(N, 28, 28)"),
                                ("empty", np.zeros((0, 28, 28), np.uint8), "(N, 28, 28)"),
                                ("text", np.full((1, 28, 28), "a"), "dtype")]:
        np.save(tmp_path / f"{name}.npy", array)
        with pytest.raises(PipelineError, match=r".*") as info:
            predict.load_batch(tmp_path / f"{name}.npy")
        assert needle in str(info.value) and f"{name}.npy" in str(info.value), name


def test_idx_batch_rejects_label_files_and_wrong_sizes(tmp_path):
    (tmp_path / "labels-idx1-ubyte").write_bytes(encode_idx(np.zeros(5, np.uint8)))
    with pytest.raises(PipelineError, match="label file"):
        predict.load_batch(tmp_path / "labels-idx1-ubyte")
    (tmp_path / "small.idx").write_bytes(encode_idx(np.zeros((2, 8, 8), np.uint8)))
    with pytest.raises(PipelineError, match=r"small\.idx.*\(N, 28, 28\)"):
        predict.load_batch(tmp_path / "small.idx")
    (tmp_path / "cut.idx.gz").write_bytes(gzip.compress(encode_idx(np.zeros((2, 28, 28), np.uint8)))[:-9])
    with pytest.raises(PipelineError, match=r"cut\.idx\.gz"):
        predict.load_batch(tmp_path / "cut.idx.gz")


def test_exif_orientation_is_applied():
    a = np.arange(6).reshape(2, 3)
    assert predict._orient(a, 1) is a
    np.testing.assert_array_equal(predict._orient(a, 6), [[3, 0], [4, 1], [5, 2]])  # rotate 90 clockwise
    np.testing.assert_array_equal(predict._orient(a, 8), [[2, 5], [1, 4], [0, 3]])  # 90 anticlockwise
    np.testing.assert_array_equal(predict._orient(a, 3), a[::-1, ::-1])


def test_preview_names_do_not_collide():
    paths = [Path("d/a.png"), Path("d/a.jpg"), Path("d/b.jpg")]
    assert predict.preview_paths(paths) == [Path("d/a.png.preprocessed.png"), Path("d/a.jpg.preprocessed.png"),
                                            Path("d/b.preprocessed.png")]


# --------------------------------------------------------------------------- the command line


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "mnist_classification", "predict", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict[str, Path]:
    """A few drawn digits for the CLI tests: a black-on-white 3 (PNG) and a white-on-black 7 (JPEG)."""
    folder = tmp_path_factory.mktemp("drawn")
    three = 1 - render_digit("3", "DejaVu Sans", "normal", 200, 160, 90, (0.45, 0.5))
    seven = render_digit("7", "DejaVu Sans", "bold", 150, 150, 70, (0.55, 0.5))
    paths = {"3": folder / "three.png", "7": folder / "seven.jpg"}
    mpimg.imsave(paths["3"], np.repeat((three * 255).astype(np.uint8)[..., None], 3, axis=2))
    mpimg.imsave(paths["7"], np.repeat((seven * 255).astype(np.uint8)[..., None], 3, axis=2))
    return paths


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mnist-classification predict: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_cli_text_output(model_path, drawn):
    result = cli("--model", model_path, drawn["3"], drawn["7"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, path, digit in zip(lines, (drawn["3"], drawn["7"]), "37"):
        assert line.startswith(f"{path}: {digit} (")
        top = line.split("top 3: ")[1].split(", ")
        assert len(top) == 3 and top[0].startswith(f"{digit} ")


def test_cli_json_and_show(model_path, drawn):
    result = cli("--model", model_path, "--json", "--show", drawn["3"], drawn["7"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == str(model_path) and doc["batch"] is None
    assert [item["predicted"] for item in doc["images"]] == ["3", "7"]
    for item in doc["images"]:
        assert len(item["top3"]) == 3 and item["top3"][0]["class"] == item["predicted"]
        assert item["top3"][0]["probability"] == item["probability"]
        assert sum(t["probability"] for t in item["top3"]) <= 1.0 + 1e-5
        preview = Path(item["preprocessed"])
        assert preview.name == Path(item["file"]).stem + ".preprocessed.png"
        assert preview.parent == Path(item["file"]).parent
        pixels = predict.read_image(preview)
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, predict.prepare_image(item["file"]))


def test_cli_batch_npy_and_idx_write_csv(model_path, test_digits, tmp_path):
    images, labels = test_digits
    images, labels = images[:50], labels[:50]
    np.save(tmp_path / "digits.npy", images / 255.0)  # float 0..1
    (tmp_path / "digits-idx3-ubyte.gz").write_bytes(gzip.compress(encode_idx(images)))
    rows = {}
    for name, output in (("digits.npy", None), ("digits-idx3-ubyte.gz", tmp_path / "out" / "p.csv")):
        args = ["--model", model_path, tmp_path / name] + (["--output", output] if output else [])
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        csv_path = output or tmp_path / "predictions.csv"
        assert f"50 images -> {output or 'predictions.csv'}" in result.stdout
        lines = csv_path.read_text().splitlines()
        assert lines[0] == "index,predicted,probability,top3" and len(lines) == 51
        rows[name] = [line.split(",") for line in lines[1:]]
        assert [int(r[0]) for r in rows[name]] == list(range(50))
        assert all(len(r[3].split(" ")) == 3 and r[3].startswith(r[1] + ":") for r in rows[name])
        predicted = np.array([int(r[1]) for r in rows[name]])
        assert (predicted == labels).mean() >= 0.85
    assert [r[1] for r in rows["digits.npy"]] == [r[1] for r in rows["digits-idx3-ubyte.gz"]]


def test_cli_keep_stroke_width_changes_only_the_preprocessing(model_path, tmp_path):
    hairline = 1 - render_digit("0", "DejaVu Sans", "ultralight", 400, 400, 250, (0.5, 0.5))  # ExtraLight
    path = tmp_path / "zero.png"
    mpimg.imsave(path, np.repeat((hairline * 255).astype(np.uint8)[..., None], 3, axis=2))
    normalised = predict.prepare_image(path)
    kept = predict.prepare_image(path, stroke=False)
    assert (normalised > 127).sum() > (kept > 127).sum()
    for flag in ([], ["--keep-stroke-width"]):
        result = cli("--model", model_path, "--json", *flag, path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["images"][0]["predicted"] == "0"


def test_cli_bad_images(model_path, tmp_path):
    text = tmp_path / "x.png"
    text.write_text("this is not an image\n")
    assert_clean_error(cli("--model", model_path, text), str(text), "PNG or JPEG")
    blank = tmp_path / "blank.png"
    mpimg.imsave(blank, np.full((40, 40, 3), 255, np.uint8))
    assert_clean_error(cli("--model", model_path, blank), str(blank), "no ink")
    empty = tmp_path / "empty.png"  # a valid-looking PNG header declaring 0x0 pixels
    empty.write_bytes(predict.encode_png(np.zeros((0, 0), np.uint8)))
    assert_clean_error(cli("--model", model_path, empty), str(empty))
    assert_clean_error(cli("--model", model_path, tmp_path / "missing.png"), "missing.png", "not found")


def test_cli_bad_models(model_path, drawn, tmp_path):
    missing = tmp_path / "nope.npz"
    assert_clean_error(cli("--model", missing, drawn["3"]), str(missing), "not found")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(model_path.read_bytes()[:5000])
    assert_clean_error(cli("--model", truncated, drawn["3"]), str(truncated))


def test_cli_bad_batches(model_path, tmp_path):
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert_clean_error(cli("--model", model_path, pickled), str(pickled), "pickled")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 10), np.uint8))
    assert_clean_error(cli("--model", model_path, wrong), str(wrong), "(N, 28, 28)")
    assert not (tmp_path / "predictions.csv").exists()


def test_cli_works_with_a_cnn_model(drawn, tmp_path):
    """Only Network.predict_proba is used, so a CNN (here untrained) works as an MLP does."""
    params = {"model": "cnn", "hidden": [16], "activation": "relu", "init": "he", "dropout": 0.0, "seed": 0,
              "cnn": {"channels": [4, 8], "kernel_size": 3, "batch_norm": True}}
    path = tmp_path / "cnn.npz"
    build_network(params, (28, 28), [str(d) for d in range(10)], 0.13, 0.31).save(path)
    result = cli("--model", path, "--json", drawn["3"])
    assert result.returncode == 0, result.stderr
    item = json.loads(result.stdout)["images"][0]
    assert item["predicted"] in [str(d) for d in range(10)] and len(item["top3"]) == 3


def test_cli_usage_errors(model_path, drawn, tmp_path):
    assert_clean_error(cli("--model", model_path, "--output", tmp_path / "p.csv", drawn["3"]), "--output")
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.zeros((1, 28, 28), np.uint8))
    assert_clean_error(cli("--model", model_path, tmp_path / "a.npy", tmp_path / "b.npy"), "at most one")
    assert_clean_error(cli("--model", model_path, model_path), str(model_path))  # a model is not an input
    usage = cli("--help")
    assert usage.returncode == 0 and "--model PATH" in usage.stdout and "--show" in usage.stdout
