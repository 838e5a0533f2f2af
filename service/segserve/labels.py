"""Label maps: class id, name and display colour, and the training format's (k,k,k) images.

The training format stores a class-ID mask as an RGB image whose pixels are (k,k,k) for class k and
(0,0,0) for background. The label map JSON (``{"classes": [{"id", "name", "color": [r,g,b]}]}``)
gives each id a name and an RGB display colour used to colorize masks for people.

A model brought from elsewhere usually comes with a list of class names only: ``load_label_spec``
also takes a plain list (one name a line, or a JSON list) and colours it from the default palette,
and knows the built-in ``cityscapes`` map (the 19 train ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class ClassInfo:
    """One class of a label map; ``color`` is RGB."""

    id: int
    name: str
    color: tuple[int, int, int]


class LabelMapError(ValueError):
    """A label map that is malformed: duplicate ids, ids out of 0..255, bad colours."""


@dataclass(frozen=True)
class LabelMap:
    """An ordered set of classes with unique ids in 0..255."""

    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise LabelMapError("a label map needs at least one class")
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise LabelMapError(f"duplicate class ids in label map: {sorted(ids)}")
        for c in self.classes:
            if not 0 <= c.id <= 255:
                raise LabelMapError(f"class id {c.id} ({c.name!r}) is outside 0..255")
            if len(c.color) != 3 or not all(0 <= v <= 255 for v in c.color):
                raise LabelMapError(f"class {c.id} ({c.name!r}) colour {c.color} is not RGB in 0..255")

    # --- construction and serialisation -------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> LabelMap:
        try:
            items = data["classes"]
            classes = tuple(
                ClassInfo(int(c["id"]), str(c["name"]), tuple(int(v) for v in c["color"]))  # type: ignore[arg-type]
                for c in items
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LabelMapError(f"label map must be {{'classes': [{{id, name, color}}]}}: {exc}") from exc
        return cls(classes)

    @classmethod
    def from_json(cls, text: str) -> LabelMap:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise LabelMapError(f"label map is not valid JSON: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        return cls.from_json(Path(path).read_text())

    @classmethod
    def default(cls, num_classes: int) -> LabelMap:
        """Generic names and well-spread colours for a model that ships without a label map."""
        hsv = np.zeros((1, num_classes, 3), np.uint8)
        hsv[0, :, 0] = (np.arange(num_classes) * 180 // max(num_classes, 1)).astype(np.uint8)
        hsv[0, :, 1:] = 200
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
        return cls(
            tuple(
                ClassInfo(i, f"class_{i}", (int(rgb[i][0]), int(rgb[i][1]), int(rgb[i][2])))
                for i in range(num_classes)
            )
        )

    @classmethod
    def from_names(cls, names: list[str]) -> LabelMap:
        """Ids 0..n-1 in list order, coloured from the default palette."""
        if not names:
            raise LabelMapError("a label map needs at least one class")
        palette = cls.default(len(names))
        return cls(tuple(ClassInfo(i, name, palette.classes[i].color) for i, name in enumerate(names)))

    def to_dict(self) -> dict:
        return {"classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    # --- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        """Number of network outputs: highest id + 1."""
        return max(c.id for c in self.classes) + 1

    @cached_property
    def names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.classes}

    @cached_property
    def bgr_lut(self) -> np.ndarray:
        """A ``(256, 1, 3)`` uint8 table for ``cv2.LUT``: class id -> BGR display colour.

        Ids not in the map are drawn black.
        """
        lut = np.zeros((256, 1, 3), np.uint8)
        for c in self.classes:
            lut[c.id, 0] = c.color[::-1]
        return lut

    # --- pixel conversions --------------------------------------------------------------------
    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """Class-ID mask (H, W) uint8 -> BGR image in the map's colours (OpenCV kernels only)."""
        return cv2.LUT(cv2.merge((mask, mask, mask)), self.bgr_lut)


# Cityscapes' 19 evaluation classes by train id, with the colours of cityscapesScripts' labels.py.
CITYSCAPES = LabelMap(
    tuple(
        ClassInfo(i, name, color)
        for i, (name, color) in enumerate(
            [
                ("road", (128, 64, 128)),
                ("sidewalk", (244, 35, 232)),
                ("building", (70, 70, 70)),
                ("wall", (102, 102, 156)),
                ("fence", (190, 153, 153)),
                ("pole", (153, 153, 153)),
                ("traffic light", (250, 170, 30)),
                ("traffic sign", (220, 220, 0)),
                ("vegetation", (107, 142, 35)),
                ("terrain", (152, 251, 152)),
                ("sky", (70, 130, 180)),
                ("person", (220, 20, 60)),
                ("rider", (255, 0, 0)),
                ("car", (0, 0, 142)),
                ("truck", (0, 0, 70)),
                ("bus", (0, 60, 100)),
                ("train", (0, 80, 100)),
                ("motorcycle", (0, 0, 230)),
                ("bicycle", (119, 11, 32)),
            ]
        )
    )
)
BUILT_IN: dict[str, LabelMap] = {"cityscapes": CITYSCAPES}


def parse_label_text(text: str, what: str = "label map") -> LabelMap:
    """The project's label-map JSON, a JSON list of names, or plain text with one name a line.

    Raises LabelMapError naming ``what`` when the text is none of these.
    """
    stripped = text.strip()
    if not stripped:
        raise LabelMapError(f"{what} is empty")
    if stripped[0] in "{[":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise LabelMapError(f"{what} is not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            return LabelMap.from_dict(data)
        if isinstance(data, list) and all(isinstance(n, str) for n in data):
            return LabelMap.from_names(data)
        raise LabelMapError(f"{what} must be {{'classes': [...]}} or a JSON list of class names")
    names = [line.strip() for line in stripped.splitlines()]
    if any(not name for name in names):
        raise LabelMapError(f"{what}: blank line among the class names (one name a line, ids from 0)")
    return LabelMap.from_names(names)


def load_label_spec(spec: str) -> tuple[LabelMap, str]:
    """``spec``: a built-in name (``cityscapes``) or a file; returns the map and where it came from.

    Raises LabelMapError for an unknown name, a missing file or a malformed one.
    """
    if spec.lower() in BUILT_IN:
        return BUILT_IN[spec.lower()], f"built-in {spec.lower()}"
    path = Path(spec)
    if not path.is_file():
        raise LabelMapError(
            f"label map {spec!r} is neither a file nor a built-in map ({', '.join(sorted(BUILT_IN))})"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelMapError(f"cannot read label map {path}: {exc}") from exc
    return parse_label_text(text, f"label map {path}"), f"file {path}"


def mask_to_training_rgb(mask: np.ndarray) -> np.ndarray:
    """Class-ID mask (H, W) -> the training format's (k,k,k) image, (H, W, 3) uint8."""
    return cv2.merge((mask, mask, mask))


def training_rgb_to_mask(image: np.ndarray) -> np.ndarray:
    """The training format's (k,k,k) image (H, W, 3) -> class-ID mask (H, W).

    Raises ValueError when a pixel's channels differ (the image is not in the (k,k,k) format).
    """
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    first = image[..., 0]
    if not (np.array_equal(first, image[..., 1]) and np.array_equal(first, image[..., 2])):
        bad = int(np.count_nonzero((first != image[..., 1]) | (first != image[..., 2])))
        raise ValueError(f"{bad} pixels are not grey (k,k,k): not a training-format label image")
    return np.ascontiguousarray(first)
