"""Training augmentation on numpy arrays: random scale, crop (optionally around a rare class), flip,
and photometric changes (colour, gamma, blur, noise, JPEG re-compression)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

IGNORE = 0  # background / padding: ignored by the loss


@dataclass(frozen=True)
class Photometric:
    """How strongly each photometric change is drawn; ``basic()`` is version 2's colour jitter only.

    Cameras differ in white balance, exposure, sharpness, noise and compression far more than
    CamVid's few sequences show (version 2 called a clear blue sky "building"): each change is
    drawn independently per crop.
    """

    jitter: float = 0.3  # brightness, contrast and saturation factors in 1 +- jitter
    hue: float = 0.0  # hue shift, fraction of the colour circle (+-)
    gamma: float = 0.0  # gamma in [1 / (1 + g), 1 + g]
    blur_p: float = 0.0  # probability of a Gaussian blur, sigma 0.4-1.5 px
    noise_p: float = 0.0  # probability of Gaussian noise, std 2-8 grey levels
    jpeg_p: float = 0.0  # probability of JPEG re-compression at quality 25-90

    @classmethod
    def basic(cls) -> Photometric:
        return cls()

    @classmethod
    def strong(cls) -> Photometric:
        return cls(jitter=0.4, hue=0.08, gamma=0.6, blur_p=0.25, noise_p=0.25, jpeg_p=0.3)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.hue > 0:
            image = shift_hue(image, float(rng.uniform(-self.hue, self.hue)))
        if self.jitter > 0:
            image = colour_jitter(image, rng, self.jitter)
        if self.gamma > 0:
            g = float(np.exp(rng.uniform(-1, 1) * np.log1p(self.gamma)))
            lut = np.clip(255.0 * (np.arange(256) / 255.0) ** g + 0.5, 0, 255).astype(np.uint8)
            image = cv2.LUT(image, lut)
        if self.blur_p and rng.random() < self.blur_p:
            image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.4, 1.5)))
        if self.noise_p and rng.random() < self.noise_p:
            noise = rng.normal(0.0, rng.uniform(2.0, 8.0), image.shape)
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
        if self.jpeg_p and rng.random() < self.jpeg_p:
            image = recompress_jpeg(image, int(rng.integers(25, 91)))
        return image


@dataclass(frozen=True)
class Crop:
    """An augmented training crop; ``rows[r]`` is where row r lies in the scaled whole frame
    (0 top, 1 bottom; beyond 1 in bottom padding)."""

    image: np.ndarray
    mask: np.ndarray
    rows: np.ndarray


@dataclass
class Augmenter:
    """Random scale in ``scale``, a ``crop`` = (H, W) window, flips and photometric changes.

    With probability ``rare_p`` the crop is placed around a random pixel of one of ``rare`` (a
    class drawn uniformly among the rare classes in the frame), so poles, signs and people are
    seen far more often than their pixel share. Padding (when the scaled frame is smaller than the
    crop) is grey in the image and ``IGNORE`` in the mask. ``rng`` makes it reproducible.
    """

    crop: tuple[int, int]
    scale: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    rng: np.random.Generator | None = None
    photometric: Photometric = field(default_factory=Photometric.basic)
    rare: Sequence[int] = ()
    rare_p: float = 0.0

    def __post_init__(self) -> None:
        if self.rng is None:
            self.rng = np.random.default_rng(0)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        crop = self.sample(image, mask)
        return crop.image, crop.mask

    def sample(self, image: np.ndarray, mask: np.ndarray) -> Crop:
        """One augmented crop, with where its rows lie in the whole frame."""
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
        y, x = self._origin(mask, rng)
        image, mask = image[y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]
        if self.hflip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image = self.photometric(np.ascontiguousarray(image), rng)
        rows = ((y + np.arange(ch, dtype=np.float32) + 0.5) / nh).astype(np.float32)
        return Crop(np.ascontiguousarray(image), np.ascontiguousarray(mask), rows)

    def _origin(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of the crop: uniform, or (``rare_p``) one that contains a rare pixel."""
        ch, cw = self.crop
        max_y, max_x = mask.shape[0] - ch, mask.shape[1] - cw
        if self.rare and self.rare_p and rng.random() < self.rare_p:
            present = [c for c in self.rare if np.any(mask == c)]
            if present:
                ys, xs = np.nonzero(mask == present[int(rng.integers(len(present)))])
                k = int(rng.integers(len(ys)))
                # the pixel lands anywhere in the crop's middle half
                y = int(ys[k]) - int(rng.integers(ch // 4, ch - ch // 4 + 1))
                x = int(xs[k]) - int(rng.integers(cw // 4, cw - cw // 4 + 1))
                return min(max(y, 0), max_y), min(max(x, 0), max_x)
        return int(rng.integers(0, max_y + 1)), int(rng.integers(0, max_x + 1))


def colour_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and saturation factors in ``1 +- strength`` (uint8 RGB in and out)."""
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    img = image.astype(np.float32)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = grey[..., None] + s * (img - grey[..., None])
    img = c * (img - grey.mean()) + grey.mean()
    img = img * b
    return np.clip(img, 0, 255).astype(np.uint8)


def shift_hue(image: np.ndarray, turn: float) -> np.ndarray:
    """Rotate the hue of uint8 RGB by ``turn`` of the colour circle (OpenCV hue is 0..179)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(turn * 180)) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def recompress_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode uint8 RGB as JPEG at ``quality`` and decode it again (the artefacts cameras send)."""
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return image
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return image if decoded is None else decoded[..., ::-1]


def class_mix(
    images: np.ndarray, masks: np.ndarray, rng: np.random.Generator, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """ClassMix across a batch of crops: with probability ``p`` a crop gets, pasted over it at the
    same place, the pixels (and labels) of a random half of the classes in the next crop.

    Objects then appear on streets, under skies and beside things they never stood next to in the
    few training sequences, so the network has to recognise them by themselves rather than by the
    scene it memorised. Background pixels of the other crop are never pasted.
    """
    mixed_images, mixed_masks = images.copy(), masks.copy()
    n = len(images)
    if n < 2:
        return mixed_images, mixed_masks
    for i in range(n):
        if rng.random() >= p:
            continue
        j = (i + 1) % n
        classes = np.unique(masks[j])
        classes = classes[classes != IGNORE]
        if len(classes) == 0:
            continue
        chosen = rng.choice(classes, size=max(1, (len(classes) + 1) // 2), replace=False)
        paste = np.isin(masks[j], chosen)
        mixed_images[i][paste] = images[j][paste]
        mixed_masks[i][paste] = masks[j][paste]
    return mixed_images, mixed_masks
