"""The training-data format: reading, validation and conversion (no torch needed).

A dataset split is a folder with ``images/NAME.jpg|png`` and ``labels/NAME.png``; each label is the
"processed image" whose pixels are RGB (k,k,k) for class k and (0,0,0) for background. The label
map JSON (``classes.json``) sits in the split folder or in its parent.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from segserve.labels import LabelMap, mask_to_training_rgb, training_rgb_to_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LABEL_MAP_NAME = "classes.json"


@dataclass(frozen=True)
class Pair:
    """One frame and its processed label image."""

    name: str
    image: Path
    label: Path


@dataclass
class Pairing:
    """The result of matching ``images/`` with ``labels/`` by file stem."""

    pairs: list[Pair] = field(default_factory=list)
    missing_label: list[str] = field(default_factory=list)
    missing_image: list[str] = field(default_factory=list)


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def pair_files(split_dir: str | Path) -> Pairing:
    """Match ``split_dir/images/*`` with ``split_dir/labels/*`` by stem."""
    root = Path(split_dir)
    images, labels = _by_stem(root / "images"), _by_stem(root / "labels")
    out = Pairing()
    for stem, img in images.items():
        if stem in labels:
            out.pairs.append(Pair(stem, img, labels[stem]))
        else:
            out.missing_label.append(stem)
    out.missing_image = [s for s in labels if s not in images]
    return out


def find_label_map(split_dir: str | Path) -> Path | None:
    """``classes.json`` in the split folder or its parent, if any."""
    root = Path(split_dir)
    for cand in (root / LABEL_MAP_NAME, root.parent / LABEL_MAP_NAME):
        if cand.is_file():
            return cand
    return None


def read_image_rgb(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label_raw(path: str | Path) -> np.ndarray:
    """A label file -> its pixels unchanged: (H, W) grey or (H, W, 3) RGB uint8."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read label image {path}")
    if img.dtype != np.uint8:
        raise ValueError(f"{path}: label images must be 8-bit, got {img.dtype}")
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    return img


def read_mask(path: str | Path) -> np.ndarray:
    """A processed (k,k,k) label image -> (H, W) uint8 class ids."""
    return training_rgb_to_mask(read_label_raw(path))


def load_split(split_dir: str | Path, names: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of a split in memory: images (N, H, W, 3) RGB and masks (N, H, W), uint8.

    Frames must share one size (resize them beforehand, e.g. with ``segserve dataset convert``).
    """
    pairs = pair_files(split_dir).pairs
    if names is not None:
        wanted = set(names)
        pairs = [p for p in pairs if p.name in wanted]
    if not pairs:
        raise FileNotFoundError(f"no image/label pairs under {split_dir}")
    images = np.stack([read_image_rgb(p.image) for p in pairs])
    masks = np.stack([read_mask(p.label) for p in pairs])
    return images, masks


def sequence_of(name: str) -> str:
    """The recording a frame comes from: its name up to the first underscore (``0001TP_006690``
    is sequence 0001TP); a name without one is its own sequence."""
    return name.split("_", 1)[0]


def load_splits(
    split_dirs: Sequence[str | Path], sequences: Collection[str] = (), exclude: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Frames of several splits together; only those of ``sequences`` (or, with ``exclude``, all
    but those) when ``sequences`` is given: how a held-out recording is kept out of training."""
    wanted = set(sequences)
    images, masks = [], []
    for folder in split_dirs:
        names = [p.name for p in pair_files(folder).pairs]
        if wanted:
            names = [n for n in names if (sequence_of(n) in wanted) != exclude]
        if names:
            i, m = load_split(folder, names)
            images.append(i)
            masks.append(m)
    if not images:
        which = f" of sequence(s) {', '.join(sorted(wanted))}" if wanted and not exclude else ""
        raise FileNotFoundError(f"no image/label pairs{which} under {', '.join(map(str, split_dirs))}")
    return np.concatenate(images), np.concatenate(masks)


def class_histogram(masks: Iterable[np.ndarray], num_bins: int = 256) -> np.ndarray:
    """Pixel count per class id over some masks."""
    hist = np.zeros(num_bins, np.int64)
    for m in masks:
        hist += np.bincount(m.ravel(), minlength=num_bins)[:num_bins]
    return hist


@dataclass
class CheckReport:
    """What ``segserve dataset check`` found; ``ok`` is False when there is any problem."""

    split_dir: Path
    num_pairs: int = 0
    problems: list[str] = field(default_factory=list)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, label_map: LabelMap | None) -> str:
        lines = [f"{self.split_dir}: {self.num_pairs} pairs"]
        lines += [f"  frame size {w}x{h}: {n}" for (h, w), n in sorted(self.sizes.items())]
        total = max(int(self.histogram.sum()), 1)
        names = label_map.names if label_map else {}
        lines.append("  class histogram (pixels, share):")
        for k in np.flatnonzero(self.histogram):
            name = names.get(int(k), "UNKNOWN")
            n = int(self.histogram[k])
            lines.append(f"    {int(k):3d} {name:<16} {n:>12d} {100 * n / total:6.2f}%")
        if label_map:
            absent = [c.name for c in label_map.classes if self.histogram[c.id] == 0]
            if absent:
                lines.append(f"  classes with no pixels: {', '.join(absent)}")
        lines.append(f"  {len(self.problems)} problem(s)" if self.problems else "  OK")
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def check_split(
    split_dir: str | Path, label_map: LabelMap | None = None, max_listed: int = 20
) -> CheckReport:
    """Validate a split: pairs, readable files, size match, grey (k,k,k) labels, known class ids."""
    root = Path(split_dir)
    rep = CheckReport(root)
    problems: list[str] = []
    if label_map is None:
        found = find_label_map(root)
        if found is None:
            problems.append(f"no {LABEL_MAP_NAME} in {root} or its parent")
        else:
            label_map = LabelMap.load(found)
    pairing = pair_files(root)
    if not pairing.pairs and not pairing.missing_image and not pairing.missing_label:
        problems.append(f"no images/ and labels/ files under {root}")
    problems += [f"{s}: image without label" for s in pairing.missing_label]
    problems += [f"{s}: label without image" for s in pairing.missing_image]
    known = {c.id for c in label_map.classes} if label_map else None
    for pair in pairing.pairs:
        try:
            img = cv2.imread(str(pair.image), cv2.IMREAD_COLOR)
            if img is None:
                raise OSError("unreadable image")
            raw = read_label_raw(pair.label)
        except (OSError, ValueError) as exc:
            problems.append(f"{pair.name}: {exc}")
            continue
        if img.shape[:2] != raw.shape[:2]:
            problems.append(
                f"{pair.name}: image {img.shape[1]}x{img.shape[0]} != label {raw.shape[1]}x{raw.shape[0]}"
            )
        try:
            mask = training_rgb_to_mask(raw)
        except ValueError as exc:
            problems.append(f"{pair.name}: {exc}")
            continue
        rep.num_pairs += 1
        rep.sizes[img.shape[:2]] = rep.sizes.get(img.shape[:2], 0) + 1
        hist = np.bincount(mask.ravel(), minlength=256)
        rep.histogram += hist
        if known is not None:
            unknown = sorted(set(np.flatnonzero(hist).tolist()) - known)
            if unknown:
                problems.append(f"{pair.name}: unknown label values {unknown}")
    if len(problems) > max_listed:
        problems = [*problems[:max_listed], f"... and {len(problems) - max_listed} more"]
    rep.problems = problems
    return rep


@dataclass
class ConvertStats:
    """What ``convert_split`` wrote."""

    written: int = 0
    unmapped_pixels: int = 0
    skipped: list[str] = field(default_factory=list)


def colour_lut(label_map: LabelMap) -> dict[int, int]:
    """Packed RGB (r<<16 | g<<8 | b) -> class id, from the label map's display colours."""
    lut: dict[int, int] = {}
    for c in label_map.classes:
        key = (c.color[0] << 16) | (c.color[1] << 8) | c.color[2]
        if key in lut and lut[key] != c.id:
            raise ValueError(f"colour {c.color} is used by two classes ({lut[key]} and {c.id})")
        lut[key] = c.id
    return lut


def colour_to_mask(rgb: np.ndarray, lut: dict[int, int], unmapped: int = 0) -> tuple[np.ndarray, int]:
    """Colour-coded label (H, W, 3) RGB -> class ids; pixels of unknown colours get ``unmapped``."""
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.array(sorted(lut), np.int32)
    ids = np.array([lut[k] for k in keys], np.uint8)
    pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    hit = keys[pos] == packed
    mask = np.where(hit, ids[pos], np.uint8(unmapped)).astype(np.uint8)
    return mask, int(np.count_nonzero(~hit))


def convert_split(
    images_dir: str | Path,
    colour_labels_dir: str | Path,
    label_map: LabelMap,
    out_dir: str | Path,
    size: tuple[int, int] | None = None,
    unmapped: int = 0,
) -> ConvertStats:
    """Colour-coded labels + a colour->class map -> the training format under ``out_dir``.

    Writes ``out_dir/images/NAME.jpg`` (or copies the frame resized to ``size`` = (W, H)),
    ``out_dir/labels/NAME.png`` as (k,k,k) and ``out_dir/classes.json``. Colours not in the map
    become ``unmapped`` (background by default).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    lut = colour_lut(label_map)
    images, labels = _by_stem(Path(images_dir)), _by_stem(Path(colour_labels_dir))
    stats = ConvertStats()
    for stem, img_path in images.items():
        if stem not in labels:
            stats.skipped.append(f"{stem}: no label image")
            continue
        img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        raw = read_label_raw(labels[stem])
        if img is None:
            stats.skipped.append(f"{stem}: unreadable image")
            continue
        if raw.ndim == 2:
            raw = cv2.merge((raw, raw, raw))
        if raw.shape[:2] != img.shape[:2]:
            stats.skipped.append(f"{stem}: image and label sizes differ")
            continue
        mask, bad = colour_to_mask(raw, lut, unmapped)
        stats.unmapped_pixels += bad
        if size is not None:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(out / "images" / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(out / "labels" / f"{stem}.png"), mask_to_training_rgb(mask))
        stats.written += 1
    label_map.save(out / LABEL_MAP_NAME)
    return stats
