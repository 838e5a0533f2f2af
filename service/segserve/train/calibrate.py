"""Per-class logit offsets that undo the prior shift of class-weighted training.

Class-frequency weights make a network over-predict rare classes (good recall, poor precision).
A constant offset per class added to the logits moves that trade-off back; it is fitted on the
*training* frames by coordinate search for the best mIoU, and folded into the classifier's bias,
so the exported graph is unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from segserve.train.metrics import confusion_matrix, miou_from_confusion
from segserve.train.model import SegNetRT


@torch.no_grad()
def sample_logits(
    model: SegNetRT,
    images: np.ndarray,
    masks: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    per_frame: int = 6000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Half-resolution logits of randomly sampled labelled pixels: (P, C) float32 and (P,) ids."""
    rng = np.random.default_rng(seed)
    model.eval()
    xs, ys = [], []
    for i in range(0, len(images), 4):
        x = torch.from_numpy(images[i : i + 4]).permute(0, 3, 1, 2).float()
        logits4 = model((x - mean) / std)
        h2, w2 = (images.shape[1] + 1) // 2, (images.shape[2] + 1) // 2
        up = torch.nn.functional.interpolate(logits4, size=(h2, w2), mode="bilinear", align_corners=False)
        half = up.permute(0, 2, 3, 1).numpy()
        for j, m in enumerate(masks[i : i + 4]):
            m2 = m[::2, ::2][:h2, :w2]
            idx = np.flatnonzero(m2.ravel() > 0)
            if idx.size == 0:
                continue
            pick = rng.choice(idx, size=min(per_frame, idx.size), replace=False)
            xs.append(half[j].reshape(-1, half.shape[-1])[pick])
            ys.append(m2.ravel()[pick])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _miou(logits: np.ndarray, truth: np.ndarray, bias: np.ndarray) -> float:
    pred = (logits + bias).argmax(1)
    return miou_from_confusion(confusion_matrix(truth, pred, logits.shape[1]))["miou"]


def fit_offsets(logits: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Coordinate search of per-class offsets (class 0 fixed): a coarse pass, then a fine one around it.

    Returns (offsets, mIoU before, mIoU after) on the given pixels.
    """
    bias = np.zeros(logits.shape[1], np.float32)
    before = best = _miou(logits, truth, bias)
    for steps in (np.arange(-2.0, 2.01, 0.25), np.arange(-0.3, 0.31, 0.1)):
        for k in range(1, logits.shape[1]):
            centre = bias[k]
            for step in steps:
                trial = bias.copy()
                trial[k] = centre + step
                score = _miou(logits, truth, trial)
                if score > best + 1e-5:
                    best, bias = score, trial
    return bias, before, best


def apply_offsets(model: SegNetRT, offsets: np.ndarray) -> None:
    """Add the offsets to the classifier bias (the logits shift by the same constants)."""
    bias = model.classifier.bias
    assert bias is not None, "the classifier is built with a bias"
    with torch.no_grad():
        bias += torch.from_numpy(offsets).to(bias.dtype)
