"""Training augmentation on numpy arrays: random scale, crop, horizontal flip, colour jitter."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IGNORE = 0  # background / padding: ignored by the loss


@dataclass
class Augmenter:
    """Random scale in ``scale``, a ``crop`` = (H, W) window, flips and brightness/contrast/saturation jitter.

    Padding (when the scaled frame is smaller than the crop) is grey in the image and ``IGNORE`` in
    the mask. ``rng`` makes it reproducible.
    """

    crop: tuple[int, int]
    scale: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    jitter: float = 0.3
    rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if self.rng is None:
            self.rng = np.random.default_rng(0)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        assert rng is not None
        s = float(rng.uniform(*self.scale))
        h, w = mask.shape
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
        ch, cw = self.crop
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(124, 116, 104))
            mask = cv2.copyMakeBorder(mask, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE)
        y = int(rng.integers(0, mask.shape[0] - ch + 1))
        x = int(rng.integers(0, mask.shape[1] - cw + 1))
        image, mask = image[y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]
        if self.hflip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.jitter > 0:
            image = colour_jitter(image, rng, self.jitter)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and saturation factors in ``1 +- strength`` (uint8 RGB in and out)."""
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    img = image.astype(np.float32)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = grey[..., None] + s * (img - grey[..., None])
    img = c * (img - grey.mean()) + grey.mean()
    img = img * b
    return np.clip(img, 0, 255).astype(np.uint8)
