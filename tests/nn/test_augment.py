"""Augmentation: exact warps for known transforms, the random augmenter's properties."""

import numpy as np
import pytest

from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.params import validate
from mnist_classification.nn.augment import Augmenter, gaussian_matrix, warp

IDENTITY = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)


def _dot(y, x, size=9):
    image = np.zeros((1, size, size), np.float32)
    image[0, y, x] = 1.0
    return image


def test_identity_warp_returns_the_image():
    images = np.random.default_rng(0).random((3, 7, 7), dtype=np.float32)
    np.testing.assert_array_equal(warp(images, np.stack([IDENTITY] * 3), background=-1), images)


def test_integer_translation_moves_a_pixel():
    # Output (x, y) samples input (x - 2, y + 1): the dot at (x=4, y=4) appears at (x=6, y=3).
    m = IDENTITY.copy()
    m[:, 2] = [-2, 1]
    out = warp(_dot(4, 4), m[None], background=0)
    assert out[0, 3, 6] == 1.0 and out.sum() == 1.0


def test_half_pixel_translation_interpolates_bilinearly():
    m = IDENTITY.copy()
    m[0, 2] = 0.5
    out = warp(_dot(4, 4), m[None], background=0)
    np.testing.assert_allclose(out[0, 4, 3:5], [0.5, 0.5])


def test_rotation_by_90_degrees_about_the_centre():
    # Output (x, y) samples input (y, -x) (centred coordinates): out[r, c] = in[4 - c, r], a clockwise turn.
    m = np.array([[0, 1, 0], [-1, 0, 0]], dtype=np.float32)
    image = np.random.default_rng(1).random((1, 5, 5), dtype=np.float32)
    np.testing.assert_allclose(warp(image, m[None], background=0)[0], np.rot90(image[0], k=-1), atol=1e-6)


def test_samples_outside_the_image_read_the_background():
    m = IDENTITY.copy()
    m[0, 2] = 100
    out = warp(np.ones((2, 6, 6), np.float32), np.stack([m, m]), background=-0.4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.float32(-0.4))


def test_gaussian_matrix_rows_sum_to_one_and_are_symmetric_inside():
    g = gaussian_matrix(28, 4.0)
    np.testing.assert_allclose(g.sum(axis=1), 1, rtol=1e-6)
    assert g[14, 10] == pytest.approx(g[14, 18])


def _augmenter(seed=0, **overrides):
    section = validate({"train": {"augment": {"enabled": True, **overrides}}})["train"]["augment"]
    return Augmenter.from_params(section, np.random.default_rng(seed))


def test_disabled_augmentation_is_none():
    assert Augmenter.from_params(validate({})["train"]["augment"], np.random.default_rng(0)) is None


def test_zero_strength_augmenter_is_the_identity():
    images = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    augmenter = _augmenter(shift=0, rotation=0, scale=0, shear=0, elastic_alpha=0)
    np.testing.assert_allclose(augmenter(images), images, atol=1e-5)


@pytest.mark.parametrize("elastic_alpha", [0.0, 8.0])
def test_augmenter_is_seeded_keeps_shape_and_moves_pixels(elastic_alpha):
    images = np.zeros((8, 28, 28), np.float32)
    images[:, 10:18, 12:16] = 1
    a = _augmenter(0, elastic_alpha=elastic_alpha)(images)
    b = _augmenter(0, elastic_alpha=elastic_alpha)(images)
    c = _augmenter(1, elastic_alpha=elastic_alpha)(images)
    assert a.shape == images.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.allclose(a, images)
    # Ink is moved, not created: mass stays within the scale range (1 +/- 0.1)^2 and a bit of edge loss.
    ratio = a.sum(axis=(1, 2)) / images.sum(axis=(1, 2))
    assert np.all((ratio > 0.7) & (ratio < 1.3))


def test_random_matrices_respect_the_ranges():
    augmenter = _augmenter(shift=0, rotation=30, scale=0, shear=0)
    m = augmenter.random_matrices(1000)
    # Pure rotations: orthonormal 2x2 part with angles within +-30 degrees.
    angles = np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))
    assert np.all(np.abs(angles) <= 30 + 1e-6) and np.abs(angles).max() > 25
    np.testing.assert_allclose(np.linalg.det(m[:, :, :2]), 1, rtol=1e-6)


def test_augmenter_fills_with_its_background():
    augmenter = Augmenter(shift=20.0, rotation=0.0, scale=0.0, shear=0.0, elastic_alpha=0.0, elastic_sigma=4.0,
                          rng=np.random.default_rng(0), background=-0.4)
    out = augmenter(np.ones((8, 6, 6), np.float32))
    assert np.isclose(out, -0.4).any() and (np.isclose(out, -0.4) | (out > -0.4)).all()


def test_flip_mirrors_left_to_right_exactly():
    images = np.random.default_rng(2).random((6, 28, 28), dtype=np.float32)
    augmenter = _augmenter(shift=0, rotation=0, scale=0, shear=0, flip=1.0)
    np.testing.assert_array_equal(augmenter(images), images[:, :, ::-1])


def test_flip_mirrors_about_the_given_share_and_leaves_the_rest():
    images = np.random.default_rng(3).random((400, 9, 9), dtype=np.float32)
    out = _augmenter(0, shift=0, rotation=0, scale=0, shear=0, flip=0.25)(images)
    mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2))
    kept = np.all(out == images, axis=(1, 2))
    assert np.all(mirrored ^ kept)  # every image is one or the other, exactly
    assert 70 <= mirrored.sum() <= 130  # 100 expected; binomial sd 8.7


def test_flip_coins_come_after_the_affine_draws():
    # flip = 0 draws exactly the affine maps of an augmenter built without it (earlier recipes keep their
    # random stream); flip = 1 negates the sampled x (the first row) of those same maps.
    with_key = _augmenter(5, flip=0.0).random_matrices(64)
    rng = np.random.default_rng(5)
    section = validate({"train": {"augment": {"enabled": True}}})["train"]["augment"]
    without = Augmenter(section["shift"], section["rotation"], section["scale"], section["shear"],
                        section["elastic_alpha"], section["elastic_sigma"], rng).random_matrices(64)
    np.testing.assert_array_equal(with_key, without)
    flipped = _augmenter(5, flip=1.0).random_matrices(64)
    np.testing.assert_array_equal(flipped[:, 0], -without[:, 0])
    np.testing.assert_array_equal(flipped[:, 1], without[:, 1])


@pytest.mark.parametrize("flip", [-0.1, 1.5])
def test_flip_outside_zero_to_one_is_refused(flip):
    with pytest.raises(PipelineError, match=r"train.augment.flip .*a probability in \[0, 1\]"):
        validate({"train": {"augment": {"flip": flip}}})


def test_erase_sets_one_rectangle_per_image_to_the_background():
    images = np.random.default_rng(4).random((300, 28, 28), dtype=np.float32) + 1  # never the background
    augmenter = _augmenter(0, shift=0, rotation=0, scale=0, shear=0, erase=1.0)
    augmenter.background = -0.5
    out = augmenter(images)
    erased = out == np.float32(-0.5)
    np.testing.assert_array_equal(out[~erased], images[~erased])  # everything else untouched
    rows, cols = erased.any(axis=2), erased.any(axis=1)
    heights, widths = rows.sum(axis=1), cols.sum(axis=1)
    # One solid rectangle each: its bounding box is all erased.
    assert np.all(erased.sum(axis=(1, 2)) == heights * widths) and np.all(heights > 0)
    area = heights * widths / (28 * 28)
    assert area.min() >= 0.015 and area.max() <= 0.45  # ERASE_AREA (0.02, 0.4), up to rounding
    assert area.max() > 0.3 and area.min() < 0.05
    aspect = heights / widths
    assert aspect.min() < 0.5 and aspect.max() > 2  # tall and wide ones both occur


def test_erase_probability_and_stream():
    images = np.random.default_rng(5).random((400, 12, 12), dtype=np.float32) + 1
    out = _augmenter(1, shift=0, rotation=0, scale=0, shear=0, erase=0.25)(images)
    changed = np.any(out != images, axis=(1, 2))
    assert 70 <= changed.sum() <= 130  # 100 expected
    # The rectangles are drawn after the warps: outside them, erasing changes nothing, so with erase = 0
    # (no draws at all) every earlier recipe keeps its random stream.
    plain, erased = _augmenter(2)(images), _augmenter(2, erase=1.0)(images)
    kept = erased != np.float32(0.0)  # the test augmenter's background is 0; the warped images are >= 1 inside
    assert kept.mean() < 0.95
    np.testing.assert_array_equal(erased[kept], plain[kept])


def test_erase_outside_zero_to_one_is_refused():
    with pytest.raises(PipelineError, match=r"train.augment.erase .*a probability in \[0, 1\]"):
        validate({"train": {"augment": {"erase": 2}}})
