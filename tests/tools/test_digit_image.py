"""Each step of turning a photo of a digit into an MNIST-like image, on synthetic arrays."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_classification.infra.errors import PipelineError
from mnist_classification.tools.digit_image import (
    STROKE_BAND,
    STROKE_WORK,
    center_by_mass,
    centre_of_mass,
    crop_to_ink,
    estimate_background,
    fit_in_box,
    ink_bounds,
    ink_mask,
    is_dark_on_light,
    noise_sigma,
    normalise_polarity,
    normalise_stroke,
    otsu_threshold,
    prepare_digit,
    resample_matrix,
    resize,
    shrink_large,
    stroke_width,
    to_grayscale,
)


def ring(size=120, outer=40, inner=28, centre=(60, 60)):
    """A bright ring (a zero) on black, float in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - centre[0], (xx - centre[1]) * 1.4)
    return ((r <= outer) & (r >= inner)).astype(np.float32)


def tight(image):
    """``image`` cropped to its non-zero pixels."""
    rows, cols = np.nonzero(image.any(axis=1))[0], np.nonzero(image.any(axis=0))[0]
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def paper(ink, background=0.85, ink_level=0.15, noise=0.0, seed=0):
    """``ink`` coverage drawn dark on light paper, with optional Gaussian noise."""
    image = background + (ink_level - background) * ink
    if noise:
        image = image + np.random.default_rng(seed).normal(0, noise, ink.shape)
    return np.clip(image, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- to_grayscale


def test_grayscale_luma_of_rgb_uint8():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1] = 255
    gray = to_grayscale(rgb)
    assert gray.dtype == np.float32 and gray.shape == (2, 3)
    np.testing.assert_allclose(gray[0], [0.299, 0.587, 0.114], atol=1e-6)
    np.testing.assert_allclose(gray[1], 1.0, atol=1e-6)


def test_grayscale_alpha_is_composited_over_white():
    rgba = np.zeros((1, 3, 4), np.uint8)  # black pixels, alpha 0, 128, 255
    rgba[0, :, 3] = (0, 128, 255)
    np.testing.assert_allclose(to_grayscale(rgba)[0], [1.0, 1 - 128 / 255, 0.0], atol=1e-6)
    la = np.array([[[0, 0], [0, 255]]], np.uint8)  # grey + alpha
    np.testing.assert_allclose(to_grayscale(la)[0], [1.0, 0.0])


def test_grayscale_dtypes_and_ranges():
    np.testing.assert_allclose(to_grayscale(np.array([[0, 65535]], np.uint16)), [[0, 1]])
    np.testing.assert_allclose(to_grayscale(np.array([[0.0, 0.5, 2.0]])), [[0, 0.5, 1]])
    np.testing.assert_allclose(to_grayscale(np.array([[False, True]])), [[0, 1]])
    np.testing.assert_allclose(to_grayscale(np.array([[0, 255]], np.int64)), [[0, 1]])
    np.testing.assert_allclose(to_grayscale(np.zeros((2, 2, 1), np.uint8)), np.zeros((2, 2)))


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (4, 0, 3)])
def test_grayscale_refuses_empty_images(shape):
    with pytest.raises(PipelineError, match="empty"):
        to_grayscale(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(5,), (2, 2, 5), (2, 2, 2, 2)])
def test_grayscale_refuses_other_shapes(shape):
    with pytest.raises(PipelineError, match="expected"):
        to_grayscale(np.zeros(shape, np.uint8))


# --------------------------------------------------------------------------- normalise_polarity


def test_dark_on_light_is_inverted():
    ink = ring()
    out = normalise_polarity(paper(ink))
    assert is_dark_on_light(paper(ink))
    np.testing.assert_allclose(out[ink == 1], 0.7, atol=1e-4)  # ink now bright: 0.85 - 0.15
    np.testing.assert_allclose(out[ink == 0], 0.0, atol=1e-4)  # background black


def test_light_on_dark_is_kept():
    ink = ring()
    image = 0.1 + 0.8 * ink
    assert not is_dark_on_light(image)
    out = normalise_polarity(image)
    np.testing.assert_allclose(out[ink == 1], 0.8, atol=1e-4)
    np.testing.assert_allclose(out[ink == 0], 0.0, atol=1e-4)


def test_both_polarities_give_the_same_ink():
    ink = ring()
    dark = normalise_polarity(paper(ink, 0.9, 0.1))
    light = normalise_polarity(0.1 + 0.8 * ink)
    np.testing.assert_allclose(dark, light, atol=1e-4)


def test_uneven_lighting_is_removed():
    ink = ring()
    ramp = np.linspace(0.6, 0.95, ink.shape[1])[None, :]  # light falls off across the page
    image = ramp * (1 - ink) + 0.1 * ink
    np.testing.assert_allclose(estimate_background(image)[ink == 0], image[ink == 0], atol=1e-4)
    out = normalise_polarity(image)
    assert np.abs(out[ink == 0]).max() < 1e-3
    assert out[ink == 1].min() > 0.45


def test_ink_touching_the_border_barely_moves_the_background():
    ink = np.zeros((60, 60), np.float32)
    ink[:, 25:35] = 1  # a "1" running from the top edge to the bottom edge
    background = estimate_background(paper(ink, 0.8, 0.1, noise=0.02))
    assert np.abs(background - 0.8).max() < 0.02


# --------------------------------------------------------------------------- crop_to_ink


def test_crop_bounds_of_a_noisy_rectangle():
    ink = np.zeros((100, 80), np.float32)
    ink[20:70, 30:45] = 1
    image = normalise_polarity(paper(ink, noise=0.03, seed=1))
    mask, threshold, sigma = ink_mask(image)
    assert ink_bounds(mask) == (20, 69, 30, 44)
    assert 4 * sigma <= threshold < 0.7
    crop = crop_to_ink(image)
    assert crop.shape == (50, 15) and crop.dtype == np.float32
    assert crop.min() >= 0 and crop.max() == 1
    assert np.mean(crop == 1) >= 0.5  # the stroke core is stretched to full white despite the noise


def test_crop_ignores_specks_and_jpeg_like_ringing():
    rng = np.random.default_rng(2)
    ink = np.zeros((120, 120), np.float32)
    ink[30:90, 50:62] = 1
    image = paper(ink, noise=0.02)
    image[5, 5] = image[110, 100] = image[111, 100] = 0.0  # dust: isolated dark specks
    edges = np.zeros_like(ink)
    edges[28:92, 48:64] = 1
    image -= 0.06 * (edges - ink) * rng.choice([-1, 1], ink.shape)  # ringing halo around the stroke
    mask, _, _ = ink_mask(normalise_polarity(image))
    assert ink_bounds(mask) == (30, 89, 50, 61)


def test_otsu_splits_two_levels():
    values = np.concatenate([np.full(900, 0.1), np.full(100, 0.8)])
    assert 0.1 < otsu_threshold(values, 0.0, 1.0) < 0.8


@pytest.mark.parametrize("image", [
    np.full((50, 50), 1.0),  # all white
    np.zeros((50, 50)),  # all black
    np.full((50, 50), 0.5) + np.random.default_rng(0).normal(0, 0.05, (50, 50)),  # grey noise
    np.full((1, 1), 0.3),  # one pixel
])
def test_blank_images_have_no_ink(image):
    with pytest.raises(PipelineError, match="no ink"):
        prepare_digit(np.clip(image, 0, 1).astype(np.float32))


def _noise(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return np.clip(0.5 + rng.normal(0, 0.2, (64, 64)), 0, 1)
    if kind == "uniform":
        return rng.uniform(0, 1, (100, 100))
    if kind == "blocks":  # low-resolution noise enlarged by nearest-neighbour
        return np.kron(rng.uniform(0, 1, (16, 16)), np.ones((4, 4)))
    return np.kron(np.clip(0.5 + rng.normal(0, 0.15, (28, 28)), 0, 1), np.ones((8, 8)))


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "blocks", "gaussian blocks"])
def test_pure_noise_is_refused(kind):
    for seed in range(20):
        with pytest.raises(PipelineError, match="no ink"):
            prepare_digit(_noise(kind, seed).astype(np.float32))


def test_noise_sigma_ignores_ink_however_much_of_the_image_it_fills():
    """Background noise of sigma 0.05 around 0 and ink at +0.8 on 10%, 50% or 80% of the pixels."""
    rng = np.random.default_rng(0)
    for share in (0.1, 0.5, 0.8):
        residual = rng.normal(0, 0.05, 100_000)
        residual[: int(share * residual.size)] += 0.8
        assert noise_sigma(residual) == pytest.approx(0.05, rel=0.05)
    assert noise_sigma(np.zeros(10)) == 0.0


def soft_ring(h=160, w=120, width=0.25, soft=0.1):
    """A zero filling its frame, as when a digit is cropped to its ink: an elliptical ring touching all
    four sides, ``width`` of the half-axes thick, with soft (anti-aliased) edges ``soft`` wide; float in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    return np.clip((width - np.abs(r - (1 - width))) / soft, 0, 1).astype(np.float32)


@pytest.mark.parametrize("width, soft", [(0.25, 0.1), (0.3, 0.2)])
@pytest.mark.parametrize("dark_on_light", [True, False])
def test_a_digit_filling_its_image_is_not_refused(width, soft, dark_on_light):
    """Ink over much of the frame made the noise estimate (a median absolute deviation over all pixels)
    measure the ink, and such digits were refused as "nothing stands out from the noise". Now the zero
    comes out as a zero: a ring of ink around an empty middle, in the 20x20 box."""
    coverage = soft_ring(width=width, soft=soft)
    prepared = prepare_digit(0.9 - 0.8 * coverage if dark_on_light else 0.1 + 0.8 * coverage)
    assert prepared[12:16, 12:16].max() < 64  # the hole
    rows, cols = np.nonzero(prepared > 127)
    assert rows.max() - rows.min() >= 17 and cols.max() - cols.min() >= 10
    middle = prepared[12:16]
    assert middle[:, :12].max() > 200 and middle[:, 16:].max() > 200  # both sides of the ring


def test_a_few_hot_pixels_are_not_a_digit():
    image = np.ones((200, 200), np.float32)
    image[[10, 50, 150], [20, 100, 180]] = 0
    with pytest.raises(PipelineError, match="no ink"):
        prepare_digit(image)


def test_blank_uint8_rgb_image_has_no_ink():
    with pytest.raises(PipelineError, match="no ink"):
        prepare_digit(np.full((64, 48, 3), 255, np.uint8))


# --------------------------------------------------------------------------- resampling and the 20x20 box


def test_resample_matrix_rows_sum_to_one_and_shrinking_keeps_the_mean():
    for n_in, n_out in [(100, 20), (37, 20), (20, 20), (7, 20), (1, 20), (20, 1)]:
        matrix = resample_matrix(n_in, n_out)
        assert matrix.shape == (n_out, n_in)
        np.testing.assert_allclose(matrix.sum(axis=1), 1, atol=1e-6)
    signal = np.random.default_rng(0).random((1, 137)).astype(np.float32)
    assert resize(signal, 1, 20).mean() == pytest.approx(signal.mean(), rel=1e-5)


def test_area_resampling_anti_aliases():
    stripes = np.tile(np.array([0, 1], np.float32), (40, 40))  # 1-pixel stripes, 40x80
    out = resize(stripes, 20, 20)
    np.testing.assert_allclose(out, 0.5, atol=1e-5)  # no aliasing into moire


@pytest.mark.parametrize("shape, expected", [((40, 10), (20, 5)), ((10, 40), (5, 20)), ((30, 30), (20, 20)),
                                             ((3, 2), (20, 13)), ((200, 1), (20, 1)), ((57, 23), (20, 8))])
def test_fit_in_box_keeps_the_aspect_ratio(shape, expected):
    out = fit_in_box(np.ones(shape, np.float32), 20)
    assert out.shape == expected
    assert out.max() == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300))
def test_fit_in_box_aspect_ratio_property(h, w):
    out = fit_in_box(np.ones((h, w), np.float32), 20)
    assert max(out.shape) == 20
    short = min(h, w) / max(h, w) * 20
    assert abs(min(out.shape) - max(short, 1)) <= 0.5 + 1e-9


def test_fit_in_box_brightens_faint_strokes():
    digit = np.zeros((200, 100), np.float32)
    digit[:, 50] = 1  # a one-pixel line at 10x the box size averages down to 0.1
    out = fit_in_box(digit, 20)
    assert out.max() == pytest.approx(1.0)


# --------------------------------------------------------------------------- centre of mass


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 20), w=st.integers(1, 20))
def test_center_by_mass_lands_within_half_a_pixel(seed, h, w):
    rng = np.random.default_rng(seed)
    digit = rng.random((h, w)).astype(np.float32)
    digit[rng.random((h, w)) < 0.5] = 0
    digit[h // 2, w // 2] = 1  # never all zero
    # Keep the mass away from the extremes so a whole-pixel shift can reach the centre without clipping.
    out = center_by_mass(digit, 28)
    assert out.shape == (28, 28)
    assert out.sum() == pytest.approx(digit.sum(), rel=1e-5)  # nothing cut off
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 0.5 + 1e-6 and abs(cx - 13.5) <= 0.5 + 1e-6


def test_center_by_mass_of_a_lopsided_digit():
    digit = np.zeros((20, 12), np.float32)
    digit[:4, :] = 1  # a "7": heavy top bar
    digit[:, 10:] = 1
    out = center_by_mass(digit)
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 0.5 and abs(cx - 13.5) <= 0.5
    assert out.sum() == pytest.approx(digit.sum())


def test_center_by_mass_never_cuts_the_digit_off():
    digit = np.zeros((20, 20), np.float32)
    digit[0, 0] = 1  # all the mass in a corner: the shift is limited to keep the digit inside
    digit[19, 19] = 0.01
    out = center_by_mass(digit)
    assert out.sum() == pytest.approx(digit.sum())


# --------------------------------------------------------------------------- stroke width


def test_stroke_width_of_a_bar():
    bar = np.zeros((100, 100), bool)
    bar[10:90, 40:46] = True
    assert stroke_width(bar) == pytest.approx(6 * 80 / 86 * 4 / np.pi, rel=1e-6)


@pytest.mark.parametrize("outer, inner", [(40, 38.5), (40, 18)])  # hairline and marker zeros
def test_stroke_normalisation_moves_width_into_mnist_range(outer, inner):
    digit = tight(ring(120, outer, inner))
    before = stroke_width(resize(digit, 80, round(80 * digit.shape[1] / digit.shape[0])) > 0.5) / STROKE_WORK
    assert not STROKE_BAND[0] <= before <= STROKE_BAND[1]
    out = normalise_stroke(digit)
    width = stroke_width(out > 0.5) * 20 / max(out.shape)
    assert STROKE_BAND[0] - 0.4 <= width <= STROKE_BAND[1] + 0.4
    assert out[0].max() > 0.5 and out[:, 0].max() > 0.5  # re-cropped to the ink


def test_stroke_normalisation_leaves_mnist_like_strokes_alone():
    digit = tight(ring(120, 40, 30))
    out = normalise_stroke(digit)
    assert max(out.shape) == 80
    assert stroke_width(out > 0.5) / STROKE_WORK == pytest.approx(
        stroke_width(resize(digit, *out.shape) > 0.5) / STROKE_WORK)


# --------------------------------------------------------------------------- the whole chain


def test_prepare_digit_is_mnist_like():
    image = (paper(ring(), noise=0.02) * 255).astype(np.uint8)
    out = prepare_digit(np.stack([image] * 3, axis=2))
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    rows, cols = np.nonzero(out.any(axis=1))[0], np.nonzero(out.any(axis=0))[0]
    assert rows[-1] - rows[0] + 1 in (20, 21, 22) and cols[-1] - cols[0] + 1 <= 22
    assert out.max() == 255 and out[0].max() == 0 and out[:, 0].max() == 0
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 0.5 and abs(cx - 13.5) <= 0.5


def test_prepare_digit_same_for_both_polarities_and_positions():
    ink = ring(160, 30, 20, centre=(50, 110))
    moved = ring(160, 30, 20, centre=(100, 60))
    a = prepare_digit(paper(ink, 0.9, 0.1))
    b = prepare_digit(0.1 + 0.8 * moved)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_shrink_large_block_averages():
    image = np.zeros((3000, 2000), np.float32)
    image[:, 1000:] = 1
    small = shrink_large(image, 1_000_000)
    assert small.shape == (1000, 666) and small.size <= 1_000_000
    assert small.mean() == pytest.approx(image[:, :1998].mean(), abs=1e-3)
    assert shrink_large(np.ones((10, 10)), 1_000_000).shape == (10, 10)
