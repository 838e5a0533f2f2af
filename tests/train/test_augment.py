from __future__ import annotations

import numpy as np
from segserve.train.augment import IGNORE, Augmenter, Photometric, recompress_jpeg, shift_hue


def test_augmenter_shapes_and_labels() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    mask = rng.integers(1, 5, (60, 80), dtype=np.uint8)
    aug = Augmenter((48, 64), scale=(0.5, 2.0), rng=np.random.default_rng(0))
    for _ in range(20):
        img, m = aug(image, mask)
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        assert m.shape == (48, 64)
        assert set(np.unique(m)) <= {IGNORE, 1, 2, 3, 4}  # nearest resize: no new labels


def test_rare_crops_contain_the_rare_class() -> None:
    """A crop placed around a rare class always contains it; uniform crops mostly miss a small object."""
    image = np.zeros((360, 480, 3), np.uint8)
    mask = np.full((360, 480), 4, np.uint8)  # road
    mask[300:306, 20:24] = 3  # a 4x6 pole in a corner
    rare = Augmenter((96, 128), scale=(1.0, 1.0), rng=np.random.default_rng(0), rare=[3], rare_p=1.0)
    uniform = Augmenter((96, 128), scale=(1.0, 1.0), rng=np.random.default_rng(0))
    assert all(np.any(rare(image, mask)[1] == 3) for _ in range(50))
    assert sum(np.any(uniform(image, mask)[1] == 3) for _ in range(50)) < 25


def test_strong_photometric_changes_pixels_not_labels() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    mask = rng.integers(1, 5, (60, 80), dtype=np.uint8)
    aug = Augmenter(
        (60, 80),
        scale=(1.0, 1.0),
        hflip=False,
        rng=np.random.default_rng(0),
        photometric=Photometric.strong(),
    )
    changed = 0
    for _ in range(10):
        img, m = aug(image, mask)
        assert img.dtype == np.uint8 and img.shape == image.shape
        assert np.array_equal(m, mask)
        changed += int(np.abs(img.astype(int) - image).mean() > 2)
    assert changed >= 8


def test_hue_shift_turns_blue_towards_other_hues() -> None:
    blue = np.zeros((4, 4, 3), np.uint8)
    blue[..., 2] = 200  # RGB blue
    assert np.array_equal(shift_hue(blue, 0.0), blue)
    turned = shift_hue(blue, 1 / 3)  # a third of the circle: blue -> red
    assert turned[0, 0, 0] > 150 and turned[0, 0, 2] < 50


def test_jpeg_recompression_keeps_size_and_roughly_the_image() -> None:
    image = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))
    out = recompress_jpeg(image, 30)
    assert out.shape == image.shape and np.abs(out.astype(int) - image).mean() < 8


def test_class_mix_pastes_whole_classes_of_the_next_crop_with_their_labels() -> None:
    from segserve.train.augment import class_mix

    rng = np.random.default_rng(0)
    masks = np.stack([np.full((8, 8), 4, np.uint8), np.zeros((8, 8), np.uint8)])
    masks[1, :2] = 1  # sky in the second crop's top rows
    masks[1, 5:, :3] = 9  # a car
    images = np.stack([np.full((8, 8, 3), 10, np.uint8), np.full((8, 8, 3), 200, np.uint8)])
    mixed_images, mixed_masks = class_mix(images, masks, rng, p=1.0)
    pasted = mixed_masks[0] != 4
    assert pasted.any()
    # pixels pasted onto crop 0 come from crop 1, labels and colours together, whole classes at once
    assert np.array_equal(mixed_masks[0][pasted], masks[1][pasted])
    assert (mixed_images[0][pasted] == 200).all() and (mixed_images[0][~pasted] == 10).all()
    for k in np.unique(mixed_masks[0][pasted]):
        assert np.array_equal(mixed_masks[0] == k, masks[1] == k)
    # background of the source is never pasted; the inputs are left alone
    assert IGNORE not in mixed_masks[0]
    assert (masks[0] == 4).all() and (images[0] == 10).all()
    untouched_images, untouched_masks = class_mix(images, masks, rng, p=0.0)
    assert np.array_equal(untouched_masks, masks) and np.array_equal(untouched_images, images)


def test_crop_rows_say_where_the_crop_lies_in_the_scaled_frame() -> None:
    image = np.zeros((100, 80, 3), np.uint8)
    mask = np.tile(np.arange(100, dtype=np.uint8)[:, None], (1, 80))  # label = row of the frame
    aug = Augmenter((40, 40), scale=(1.0, 1.0), hflip=False, rng=np.random.default_rng(3))
    for _ in range(10):
        crop = aug.sample(image, mask)
        assert crop.rows.shape == (40,) and crop.rows.dtype == np.float32
        assert np.allclose(crop.rows, (crop.mask[:, 0] + 0.5) / 100)
    doubled = Augmenter((40, 40), scale=(2.0, 2.0), hflip=False, rng=np.random.default_rng(3))
    crop = doubled.sample(image, mask)
    assert np.allclose(np.diff(crop.rows), 1 / 200)  # a scaled frame: rows twice as dense
