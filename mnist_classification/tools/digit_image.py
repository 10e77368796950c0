"""Turn a photo or scan of one handwritten digit into an MNIST-like 28x28 image.

MNIST was made from NIST's binary scans: each digit was size-normalised to fit
a 20x20 box keeping its aspect ratio (anti-aliasing turned the edges grey) and
then centred in a 28x28 field by its centre of mass, white ink on black. The
steps below do the same to an ordinary image, each as its own function:

1. :func:`to_grayscale` - any grey/RGB/RGBA array (uint8, uint16 or float in
   [0, 1]) -> float32 luminance in [0, 1]; transparency is composited over white.
   Images over a megapixel are then block-averaged down (:func:`shrink_large`).
2. :func:`normalise_polarity` - estimate the background (a plane robustly fitted
   to the image border, so an uneven light is tolerated), invert dark-on-light
   images and subtract the background: ink comes out positive, background ~0.
3. :func:`crop_to_ink` - threshold (Otsu, never below 4 noise sigmas, so noise
   and JPEG artefacts are ignored; the noise is measured on the background's
   side only, :func:`noise_sigma`, so a digit filling its image is still ink),
   drop isolated specks, crop to the ink's bounding box and stretch the
   contrast so stroke cores are 1, background 0.
4. :func:`fit_in_box` - area-average (or bilinear, when enlarging) resampling so
   the longer side is 20 pixels and the aspect ratio is kept.
5. :func:`center_by_mass` - paste into 28x28 with the centre of mass at the centre.

Between 3 and 4, :func:`normalise_stroke` (not part of MNIST's recipe; optional)
thickens hairline strokes and thins marker strokes into MNIST's range of stroke
widths, since a photographed ballpoint digit is far thinner than any MNIST one.

:func:`prepare_digit` chains them and returns uint8 (28, 28), pixels 0..255.
Everything is vectorised NumPy; a blank image raises :class:`PipelineError`.
"""

from __future__ import annotations

import numpy as np

from mnist_classification.infra.errors import PipelineError

BOX = 20
SIZE = 28
#: Smallest ink contrast (fraction of the full 0..1 range) that counts as ink.
MIN_CONTRAST = 0.1
#: The threshold is never below this many noise standard deviations.
NOISE_SIGMAS = 4.0
#: MNIST's stroke width in pixels at the 20x20 scale, as measured by :func:`normalise_stroke`:
#: median (the target) and 10th..90th percentiles (left alone) over the MNIST test set.
STROKE_TARGET = 2.4
STROKE_BAND = (1.8, 3.4)
#: :func:`normalise_stroke` works at this multiple of the box size.
STROKE_WORK = 4
#: Larger images are first block-averaged down to at most this many pixels.
MAX_PIXELS = 1_000_000
#: ITU-R BT.601 luma weights (what Pillow's "L" conversion uses).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_NO_INK = ("no ink found: the image is blank or uniform{detail}; expected one dark digit on a light "
           "background or one light digit on a dark background")


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1] as float32 (H, W).

    Accepts (H, W) grey, (H, W, 1), (H, W, 2) grey+alpha, (H, W, 3) RGB or
    (H, W, 4) RGBA, as bool, uint8 (0..255), uint16 (0..65535), other integers
    (0..255, or 0..65535 when larger values occur) or float (0..1, clipped).
    Transparent pixels are composited over white, as an image viewer shows them.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise PipelineError(f"image array has shape {array.shape}; expected (H, W) grey, (H, W, 3) RGB "
                            "or (H, W, 4) RGBA")
    if array.size == 0:
        raise PipelineError(f"image is empty ({array.shape[0]}x{array.shape[1]} pixels); expected a picture "
                            "of one digit")
    if array.dtype == np.bool_:
        values = array.astype(np.float32)
    elif array.dtype == np.uint8:
        values = array.astype(np.float32) / np.float32(255)
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / np.float32(65535)
    elif np.issubdtype(array.dtype, np.integer):
        top = 255 if array.max() <= 255 else 65535
        values = np.clip(array, 0, top).astype(np.float32) / np.float32(top)
    elif np.issubdtype(array.dtype, np.floating):
        values = np.clip(np.nan_to_num(array.astype(np.float32), nan=1.0), 0.0, 1.0)
    else:
        raise PipelineError(f"image array has dtype {array.dtype}; expected integer or float pixels")
    if values.ndim == 2:
        return values
    channels = values.shape[2]
    colour = values[:, :, :3] if channels >= 3 else values[:, :, :1]
    gray = colour @ LUMA if channels >= 3 else colour[:, :, 0]
    if channels in (2, 4):  # composite over white: gray * alpha + 1 * (1 - alpha)
        alpha = values[:, :, -1]
        gray = gray * alpha + (np.float32(1) - alpha)
    return np.ascontiguousarray(gray, dtype=np.float32)


def noise_sigma(residual: np.ndarray) -> float:
    """Noise standard deviation of a background-subtracted image (background ~0), however much of it is ink.

    Ink lies on one side of the background and noise on both, so each side
    gives an estimate - the median distance of its pixels from 0, over 0.6745
    (the median of a half-normal distribution) - and the smaller is the noise's.
    A median absolute deviation over all pixels would measure the ink's contrast
    instead once ink fills a large part of the image, as in a tightly cropped digit.
    """
    values = np.asarray(residual).ravel()
    if values.size > 1_000_000:  # a strided sample is plenty for a robust statistic
        values = values[:: values.size // 1_000_000]
    sides = [side for side in (-values[values <= 0], values[values >= 0]) if side.size]
    return min(float(np.median(side)) for side in sides) / 0.6745


def estimate_background(gray: np.ndarray) -> np.ndarray:
    """The background as a plane a + b*y + c*x, float32 (H, W), fitted to the image's border.

    The border ring (4% of the shorter side, at least one pixel) is assumed to be
    mostly background. The fit starts from the ring's median and is refined twice
    on the ring pixels within 3 robust sigmas (at least 0.05) of the current
    plane, so ink touching the border and JPEG noise barely move it; a gradual
    change of lighting across a photo is followed.
    """
    gray = np.asarray(gray, dtype=np.float32)
    h, w = gray.shape
    width = max(1, round(0.04 * min(h, w)))
    ring = np.zeros((h, w), dtype=bool)
    ring[:width], ring[-width:], ring[:, :width], ring[:, -width:] = True, True, True, True
    ys, xs = np.nonzero(ring)
    values = gray[ring].astype(np.float64)
    # Coordinates scaled to [-1, 1] keep the least-squares problem well conditioned.
    yn = (2.0 * ys / max(h - 1, 1) - 1.0)
    xn = (2.0 * xs / max(w - 1, 1) - 1.0)
    design = np.stack([np.ones_like(yn), yn, xn], axis=1)
    coef = np.array([np.median(values), 0.0, 0.0])
    if min(h, w) >= 3:
        for _ in range(3):
            residual = values - design @ coef
            tolerance = max(3.0 * noise_sigma(residual), 0.05)
            inliers = np.abs(residual) <= tolerance
            if inliers.sum() < 10:
                break
            coef, *_ = np.linalg.lstsq(design[inliers], values[inliers], rcond=None)
    y = (2.0 * np.arange(h) / max(h - 1, 1) - 1.0)[:, None]
    x = (2.0 * np.arange(w) / max(w - 1, 1) - 1.0)[None, :]
    return (coef[0] + coef[1] * y + coef[2] * x).astype(np.float32)


def is_dark_on_light(gray: np.ndarray, background: np.ndarray | None = None) -> bool:
    """True when the ink is darker than the background (a pen drawing on paper).

    Compares how much of the image stands out above and below the background by
    more than 3 noise sigmas: the ink is whichever side holds more.
    """
    gray = np.asarray(gray, dtype=np.float32)
    residual = gray - (estimate_background(gray) if background is None else background)
    noise = 3.0 * noise_sigma(residual)
    above = float(np.clip(residual - noise, 0, None).sum())
    below = float(np.clip(-residual - noise, 0, None).sum())
    return below > above


def normalise_polarity(gray: np.ndarray) -> np.ndarray:
    """Bright ink on a black background, float32 (H, W): the ink is positive, the background ~0.

    Dark-on-light images are inverted. The estimated background (see
    :func:`estimate_background`) is subtracted, so the result is signed: noise
    leaves background pixels scattered around 0 (slightly negative included);
    :func:`crop_to_ink` clips and stretches.
    """
    gray = np.asarray(gray, dtype=np.float32)
    background = estimate_background(gray)
    residual = gray - background
    if is_dark_on_light(gray, background):
        np.negative(residual, out=residual)
    return residual


def otsu_threshold(values: np.ndarray, low: float, high: float, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` on a ``bins``-bin histogram over [low, high]."""
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    omega = np.cumsum(p)
    mu = np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    return float(edges[int(np.argmax(between)) + 1])


def _neighbour_count(mask: np.ndarray) -> np.ndarray:
    """Number of set pixels in each pixel's 3x3 neighbourhood (itself included)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    h, w = mask.shape
    return sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))


def ink_mask(ink: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Which pixels are ink: (mask (H, W) bool, threshold, noise sigma) for a :func:`normalise_polarity` image.

    The threshold is Otsu's between 0 and the ink peak, but at least 4 noise
    sigmas; pixels with fewer than 3 ink pixels in their 3x3 neighbourhood
    (isolated specks of noise or dust) are dropped. Raises PipelineError "no
    ink" when nothing stands out from the background: the brightest pixels
    (the peak) are under 6 noise sigmas (:func:`noise_sigma`) or under
    ``MIN_CONTRAST``, as in a blank, uniform or pure-noise image.
    """
    ink = np.asarray(ink, dtype=np.float32)
    flat = ink.ravel()
    sigma = noise_sigma(flat)
    # The "peak" ignores the brightest few pixels, so a few hot pixels are not a digit.
    k = max(3, flat.size // 5000)
    peak = float(np.partition(flat, flat.size - k)[flat.size - k]) if flat.size > k else float(flat.max())
    if peak < MIN_CONTRAST:
        raise PipelineError(_NO_INK.format(detail=f" (contrast {max(peak, 0):.3f} < {MIN_CONTRAST})"))
    if peak < 1.5 * NOISE_SIGMAS * sigma:
        raise PipelineError(_NO_INK.format(detail=f" (nothing stands out from the noise, sigma {sigma:.3f}; "
                                                  "if the digit fills the whole image, leave a margin around it)"))
    threshold = max(otsu_threshold(flat, 0.0, peak), NOISE_SIGMAS * sigma)
    mask = ink > threshold
    if mask.sum() >= 50:
        mask &= _neighbour_count(mask) >= 3
    if not mask.any():
        raise PipelineError(_NO_INK.format(detail=" (only isolated specks)"))
    return mask, threshold, sigma


def _span(profile: np.ndarray) -> tuple[int, int]:
    """First and last index of a non-negative profile after trimming 0.2% of its mass from each end."""
    cumulative = np.cumsum(profile, dtype=np.float64)
    total = cumulative[-1]
    trim = 0.002 * total
    start = int(np.searchsorted(cumulative, trim, side="right"))
    stop = int(np.searchsorted(cumulative, total - trim, side="left"))
    return start, max(stop, start)


def ink_bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), inclusive, of the ink in ``mask``, ignoring the outermost 0.2% of it."""
    top, bottom = _span(mask.sum(axis=1))
    left, right = _span(mask.sum(axis=0))
    return top, bottom, left, right


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The digit cut out of a :func:`normalise_polarity` image, float32 in [0, 1].

    Crops to the bounding box of :func:`ink_mask`, then maps the noise floor
    (3 sigmas, at most half the threshold) to 0 and the median ink pixel to 1,
    clipping: background 0, stroke cores saturated at 1 (as in MNIST, where
    over half of the pixels above 127 are 252..255), edges grey. A higher
    percentile would leave the image noise as grain inside the strokes.
    """
    ink = np.asarray(ink, dtype=np.float32)
    mask, threshold, sigma = ink_mask(ink)
    top, bottom, left, right = ink_bounds(mask)
    crop = ink[top:bottom + 1, left:right + 1]
    white = float(np.median(ink[mask]))
    black = min(3.0 * sigma, 0.5 * threshold)
    scale = 1.0 / max(white - black, 1e-6)
    return np.clip((crop - np.float32(black)) * np.float32(scale), 0.0, 1.0).astype(np.float32)


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights resampling a 1-D signal of n_in samples to n_out.

    Shrinking averages over each output pixel's footprint (exact area
    overlap, the anti-aliasing of a box filter); enlarging interpolates
    linearly between pixel centres. Rows sum to 1.
    """
    scale = n_in / n_out
    j = np.arange(n_in, dtype=np.float64)[None, :]
    if scale >= 1:
        edges = np.arange(n_out + 1, dtype=np.float64) * scale
        lo, hi = edges[:-1, None], edges[1:, None]
        weights = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    else:
        centres = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)[:, None]
        weights = np.clip(1.0 - np.abs(centres - j), 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resample a 2-D float image to (height, width) with :func:`resample_matrix` along each axis."""
    image = np.asarray(image, dtype=np.float32)
    rows = resample_matrix(image.shape[0], height)
    cols = resample_matrix(image.shape[1], width)
    return rows @ image @ cols.T


def fit_in_box(digit: np.ndarray, box: int = BOX) -> np.ndarray:
    """Scale so the longer side is ``box`` pixels, keeping the aspect ratio; float32 in [0, 1].

    The shorter side becomes round(box * short / long), at least 1 pixel.
    Afterwards the brightest pixel is rescaled to 1 (every MNIST digit reaches
    255), which keeps thin pen strokes visible after heavy shrinking.
    """
    digit = np.asarray(digit, dtype=np.float32)
    h, w = digit.shape
    if h == 0 or w == 0:
        raise PipelineError(f"the digit is empty ({h}x{w} pixels)")
    scale = box / max(h, w)
    height = box if h >= w else max(1, round(h * scale))
    width = box if w >= h else max(1, round(w * scale))
    out = resize(digit, height, width)
    top = float(out.max())
    if top <= 0:
        raise PipelineError(_NO_INK.format(detail=""))
    return np.clip(out / np.float32(top), 0.0, 1.0)


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of the ink in a boolean mask, in pixels: 2 * area / perimeter.

    The perimeter counts pixel edges between ink and background, which
    overcounts slanted boundaries; the factor pi/4 corrects that on average.
    """
    m = np.asarray(mask, dtype=np.int8)
    padded = np.pad(m, 1)
    perimeter = np.abs(np.diff(padded, axis=0)).sum() + np.abs(np.diff(padded, axis=1)).sum()
    if perimeter == 0:
        return 0.0
    return float(2.0 * m.sum() / perimeter * 4.0 / np.pi)


def _disk_filter(image: np.ndarray, radius: float, grow: bool) -> np.ndarray:
    """Grey dilation (``grow``, a maximum filter) or erosion (a minimum filter) with a disk of ``radius`` px.

    The image is first padded by the radius so dilated ink is not cut off;
    outside the image counts as background (0).
    """
    r = int(np.floor(radius))
    image = np.pad(image, r) if grow else image
    h, w = image.shape
    padded = np.pad(image, r)
    combine = np.maximum if grow else np.minimum
    out = image.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if 0 < dy * dy + dx * dx <= radius * radius:
                combine(out, padded[r + dy:r + dy + h, r + dx:r + dx + w], out=out)
    return out


def normalise_stroke(digit: np.ndarray, box: int = BOX, target: float = STROKE_TARGET,
                     band: tuple[float, float] = STROKE_BAND) -> np.ndarray:
    """Bring the stroke width of a cropped digit into MNIST's range; float32 in [0, 1], re-cropped.

    Not part of MNIST's recipe, but MNIST's writers used similar pens, while a
    ballpoint photographed at high resolution or a bold marker gives strokes
    far thinner or thicker than any MNIST digit once the digit is 20 pixels
    tall. The digit is resampled so its longer side is 4 x ``box`` pixels; its
    stroke width (:func:`stroke_width` of the pixels above 0.5, in ``box``-scale
    pixels) is measured, and if it lies outside ``band`` (MNIST's 10th..90th
    percentiles) a disk dilation or erosion moves it to ``target`` (MNIST's
    median). The result is cropped to its ink again.
    """
    digit = np.asarray(digit, dtype=np.float32)
    h, w = digit.shape
    scale = STROKE_WORK * box / max(h, w)
    work = resize(digit, max(1, round(h * scale)), max(1, round(w * scale)))
    width = stroke_width(work > 0.5) / STROKE_WORK
    if width == 0 or band[0] <= width <= band[1]:
        return work
    radius = abs(width - target) * STROKE_WORK / 2
    adjusted = _disk_filter(work, radius, grow=width < target)
    mask = adjusted > 0.5
    if not mask.any():  # eroded away: keep the original strokes
        return work
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return adjusted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted (row, column) centre of a non-negative 2-D image."""
    image = np.asarray(image, dtype=np.float64)
    total = image.sum()
    if not total > 0:
        raise PipelineError(_NO_INK.format(detail=""))
    rows = image.sum(axis=1) @ np.arange(image.shape[0]) / total
    cols = image.sum(axis=0) @ np.arange(image.shape[1]) / total
    return float(rows), float(cols)


def center_by_mass(digit: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Paste ``digit`` into a (size, size) black image so its centre of mass lands on the centre.

    The shift is whole pixels (the centre of mass ends within 0.5 pixel of
    (size - 1) / 2 in each direction, as in MNIST), limited so that no part of
    the digit is cut off.
    """
    digit = np.asarray(digit, dtype=np.float32)
    h, w = digit.shape
    if h > size or w > size:
        raise ValueError(f"digit of {h}x{w} pixels does not fit a {size}x{size} image")
    cy, cx = centre_of_mass(digit)
    centre = (size - 1) / 2
    top = min(max(int(np.rint(centre - cy)), 0), size - h)
    left = min(max(int(np.rint(centre - cx)), 0), size - w)
    out = np.zeros((size, size), dtype=np.float32)
    out[top:top + h, left:left + w] = digit
    return out


def shrink_large(gray: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Average k x k blocks (k the smallest integer that brings the image under ``max_pixels``).

    A 12-megapixel phone photo becomes ~0.75 megapixels: still far more detail
    than a 20x20 digit needs, and the later steps run in a fraction of the time.
    Images already small enough are returned unchanged.
    """
    gray = np.asarray(gray, dtype=np.float32)
    h, w = gray.shape
    k = int(np.ceil(np.sqrt(h * w / max_pixels)))
    if k <= 1:
        return gray
    h2, w2 = h // k, w // k
    if h2 == 0 or w2 == 0:
        return gray
    return gray[:h2 * k, :w2 * k].reshape(h2, k, w2, k).mean(axis=(1, 3), dtype=np.float32)


def prepare_digit(image: np.ndarray, stroke: bool = True) -> np.ndarray:
    """An image of one digit -> MNIST-like uint8 (28, 28): white ink on black, 20x20 box, centred by mass.

    ``stroke=False`` skips :func:`normalise_stroke` (the strokes keep their width).
    """
    gray = shrink_large(to_grayscale(image))
    digit = crop_to_ink(normalise_polarity(gray))
    if stroke:
        digit = normalise_stroke(digit, BOX)
    digit = fit_in_box(digit, BOX)
    canvas = center_by_mass(digit, SIZE)
    return np.rint(canvas * np.float32(255)).astype(np.uint8)
