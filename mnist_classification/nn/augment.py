"""Data augmentation for training batches: random affine transforms and elastic distortion.

Every image of a batch gets its own random transform, and the whole batch is
resampled at once with bilinear interpolation (no Python loop over images or
pixels). The transform maps each *output* pixel to the input position it
samples; positions outside the image read ``background`` (the standardised
value of a black pixel).

- affine: rotation within ±``rotation`` degrees, scale within 1 ± ``scale``,
  shear within ±``shear`` (tangent of the shear angle), translation within
  ±``shift`` pixels in x and y, and a left-right mirror with probability
  ``flip`` (for images whose classes are mirror-symmetric, such as
  Fashion-MNIST's clothes; never for digits);
- random erasing (Zhong et al. 2017), with probability ``erase`` per image: a
  rectangle of ERASE_AREA of the image's area and ERASE_ASPECT height/width,
  at a random place inside the image, set to ``background``, after the warp;
- elastic (Simard et al. 2003): a displacement field drawn uniformly from
  [-1, 1] per pixel and axis, smoothed by a Gaussian of ``elastic_sigma``
  pixels and scaled by ``elastic_alpha`` pixels.
"""

from __future__ import annotations

import numpy as np

#: Random erasing: the rectangle's share of the image area and its height / width ratio are drawn from
#: these ranges (the aspect ratio uniformly on a log scale), as in Zhong et al. 2017.
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 matrix whose product with a signal smooths it by a Gaussian of ``sigma`` pixels.

    Rows sum to one, so a constant field stays constant up to the borders.
    """
    offsets = np.arange(size, dtype=np.float32)
    weights = np.exp(-0.5 * ((offsets[:, None] - offsets[None, :]) / np.float32(sigma)) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def warp(images: np.ndarray, matrices: np.ndarray, background: float,
         displacement: np.ndarray | None = None) -> np.ndarray:
    """Resample images (N, H, W) float32 through per-image affine maps, bilinearly.

    ``matrices`` (N, 2, 3) maps output pixel (x, y), measured from the image
    centre, to the input position it samples: ``[sx, sy] = M[:, :2] @ [x, y] + M[:, 2]``
    (also from the centre). ``displacement`` (N, 2, H, W), optional, adds (dx, dy)
    pixels to every sampled position. Returns float32 (N, H, W).
    """
    n, h, w = images.shape
    cy, cx = np.float32((h - 1) / 2), np.float32((w - 1) / 2)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys -= cy
    xs -= cx
    m = matrices.astype(np.float32)[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    src_x = m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2] + cx
    src_y = m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2] + cy
    if displacement is not None:
        src_x += displacement[:, 0]
        src_y += displacement[:, 1]
    # Pad with two pixels of background: clipping a sample's top-left tap into the padded
    # range then puts every tap of an outside sample on background, so no masks are needed.
    pad = 2
    padded = np.full((n, h + 2 * pad, w + 2 * pad), background, dtype=np.float32)
    padded[:, pad:pad + h, pad:pad + w] = images
    x0, y0 = np.floor(src_x), np.floor(src_y)
    fx, fy = src_x - x0, src_y - y0
    pw = w + 2 * pad
    # Clip in float32 and convert once: integer clipping is several times slower in NumPy.
    col = np.clip(x0 + pad, 0, w + pad).astype(np.int32)
    row = np.clip(y0 + pad, 0, h + pad).astype(np.int32)
    index = (np.arange(n, dtype=np.intp) * ((h + 2 * pad) * pw))[:, None, None] + (row * pw + col)
    flat = padded.reshape(-1)
    top = flat[index]
    top += fx * (flat[index + 1] - top)
    bottom = flat[index + pw]
    bottom += fx * (flat[index + pw + 1] - bottom)
    top += fy * (bottom - top)
    return top


class Augmenter:
    """Random affine (+ optional elastic) augmentation of batches: ``augmenter(images)``.

    ``background`` is what pixels from outside the image read: the standardised
    value of a black pixel for standardised images.
    """

    def __init__(self, shift: float, rotation: float, scale: float, shear: float,
                 elastic_alpha: float, elastic_sigma: float, rng: np.random.Generator,
                 background: float = 0.0, flip: float = 0.0, erase: float = 0.0) -> None:
        self.shift, self.rotation, self.scale, self.shear = shift, rotation, scale, shear
        self.flip, self.erase = flip, erase
        self.elastic_alpha, self.elastic_sigma = elastic_alpha, elastic_sigma
        self.rng = rng
        self.background = float(background)
        self._smoothers: dict[int, np.ndarray] = {}

    @classmethod
    def from_params(cls, section: dict, rng: np.random.Generator, background: float = 0.0) -> "Augmenter | None":
        """Build from the ``train.augment`` params section; None when ``enabled`` is false."""
        if not section["enabled"]:
            return None
        return cls(section["shift"], section["rotation"], section["scale"], section["shear"],
                   section["elastic_alpha"], section["elastic_sigma"], rng, background, section["flip"],
                   section["erase"])

    def random_matrices(self, n: int) -> np.ndarray:
        """(n, 2, 3) output-to-input maps: inverses of random forward transforms R(angle) S(shear) Z(scale) X,
        X a left-right mirror with probability ``flip`` (drawn last: without it the draws are as before)."""
        rng = self.rng
        angle = np.deg2rad(rng.uniform(-self.rotation, self.rotation, n))
        zoom = rng.uniform(1 - self.scale, 1 + self.scale, n)
        shear = rng.uniform(-self.shear, self.shear, n)
        shift = rng.uniform(-self.shift, self.shift, (n, 2))
        cos, sin = np.cos(angle), np.sin(angle)
        rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
        skew = np.zeros((n, 2, 2))
        skew[:, 0, 0] = skew[:, 1, 1] = 1
        skew[:, 0, 1] = shear
        forward = rotate @ skew * zoom[:, None, None]
        inverse = np.linalg.inv(forward)
        if self.flip > 0:  # X^-1 = X negates the sampled x: the first row of the map
            inverse[:, 0] *= np.where(rng.random(n) < self.flip, -1.0, 1.0)[:, None]
        # Output o = F (i) + t  =>  input i = F^-1 (o - t) = F^-1 o - F^-1 t.
        offset = -(inverse @ shift[:, :, None])[:, :, 0]
        return np.concatenate([inverse, offset[:, :, None]], axis=2)

    def random_displacement(self, n: int, h: int, w: int) -> np.ndarray:
        """(n, 2, h, w) float32 smoothed random displacement in pixels."""
        field = self.rng.random((n, 2, h, w), dtype=np.float32)
        field *= np.float32(2)
        field -= np.float32(1)  # uniform in [-1, 1)
        rows, cols = self._smoother(h), self._smoother(w)
        smoothed = rows @ field @ cols.T
        smoothed *= np.float32(self.elastic_alpha)
        return smoothed

    def _smoother(self, size: int) -> np.ndarray:
        if size not in self._smoothers:
            self._smoothers[size] = gaussian_matrix(size, self.elastic_sigma)
        return self._smoothers[size]

    def random_rectangles(self, n: int, h: int, w: int) -> np.ndarray:
        """(n, 4) int rectangles (top, left, bottom, right), exclusive ends, to erase in (h, w) images; empty
        (bottom = top) for the images that keep everything (probability 1 - ``erase``)."""
        rng = self.rng
        erased = rng.random(n) < self.erase
        area = rng.uniform(*ERASE_AREA, n) * h * w
        aspect = np.exp(rng.uniform(*np.log(ERASE_ASPECT), n))
        height = np.clip(np.rint(np.sqrt(area * aspect)), 1, h).astype(np.intp)
        width = np.clip(np.rint(np.sqrt(area / aspect)), 1, w).astype(np.intp)
        top = (rng.random(n) * (h - height + 1)).astype(np.intp)
        left = (rng.random(n) * (w - width + 1)).astype(np.intp)
        height *= erased
        return np.stack([top, left, top + height, left + width], axis=1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Augmented copy of a float32 batch (N, H, W)."""
        n, h, w = images.shape
        displacement = self.random_displacement(n, h, w) if self.elastic_alpha > 0 else None
        out = warp(images, self.random_matrices(n), self.background, displacement)
        if self.erase > 0:
            top, left, bottom, right = self.random_rectangles(n, h, w).T[:, :, None, None]
            rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
            inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)  # (N, H, W)
            out[inside] = np.float32(self.background)
        return out
