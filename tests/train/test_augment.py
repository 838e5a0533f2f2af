from __future__ import annotations

import numpy as np
from segserve.train.augment import IGNORE, Augmenter


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
