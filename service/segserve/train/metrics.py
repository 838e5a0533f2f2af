"""Segmentation metrics from a confusion matrix (numpy only); class 0 (background) is ignored."""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = truth, cols = prediction; truth 0 is skipped."""
    t = truth.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    keep = (t > 0) & (t < num_classes)
    p = np.clip(p[keep], 0, num_classes - 1)
    return np.bincount(t[keep] * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou_from_confusion(conf: np.ndarray) -> dict:
    """mIoU over classes 1.. that occur in truth or prediction, per-class IoU and pixel accuracy."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    iou[0] = np.nan
    labelled = conf[1:].sum()
    return {
        "miou": float(np.nanmean(iou[1:])) if np.isfinite(iou[1:]).any() else 0.0,
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "pixel_accuracy": float(tp[1:].sum() / labelled) if labelled else 0.0,
    }
