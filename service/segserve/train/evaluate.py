"""Evaluate a served ONNX model on a labelled split with ONNX Runtime (no torch needed).

Frames are resized to the model's input size and fed as uint8 NHWC RGB; predictions are resized
back (nearest) to the label resolution and compared there. Writes ``report.json`` (mIoU over the
non-background classes, per-class IoU, pixel accuracy, confusion matrix), ``confusion.png`` and a
few ``sample_*.png`` pictures: frame | truth | prediction in the label map's colours.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path

import cv2
import numpy as np

from segserve.labels import LabelMap
from segserve.train.dataset import pair_files, read_image_rgb, read_mask, sequence_of
from segserve.train.metrics import confusion_matrix, miou_from_confusion


def model_label_map(session, model_path: str | Path) -> LabelMap:
    """The label map from the model metadata, else ``<model>.labels.json``, else generic names."""
    meta = session.get_modelmeta().custom_metadata_map
    if "labels" in meta:
        return LabelMap.from_json(meta["labels"])
    p = Path(model_path)
    side = p.with_name(p.name.removesuffix(".onnx") + ".labels.json")
    if side.is_file():
        return LabelMap.load(side)
    return LabelMap.default(12)


def input_size(session) -> tuple[int, int]:
    """(H, W) of the model's NHWC input."""
    shape = session.get_inputs()[0].shape
    return int(shape[1]), int(shape[2])


def side_by_side(
    frame_rgb: np.ndarray, truth: np.ndarray, pred: np.ndarray, lm: LabelMap, width: int = 240
) -> np.ndarray:
    """BGR strip: frame | truth | prediction, each ``width`` pixels wide, with captions."""
    h = round(frame_rgb.shape[0] * width / frame_rgb.shape[1])
    tiles = []
    for img, caption in (
        (cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR), "frame"),
        (lm.colorize(truth), "truth"),
        (lm.colorize(pred), "prediction"),
    ):
        interp = cv2.INTER_AREA if caption == "frame" else cv2.INTER_NEAREST
        tile = cv2.resize(img, (width, h), interpolation=interp)
        cv2.putText(tile, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    return cv2.hconcat(tiles)


def legend(lm: LabelMap, width: int) -> np.ndarray:
    """A BGR strip naming each class in its colour."""
    classes = [c for c in lm.classes if c.id != 0]
    per_row = 6
    rows = (len(classes) + per_row - 1) // per_row
    img = np.full((rows * 22 + 4, width, 3), 255, np.uint8)
    cell = width // per_row
    for i, c in enumerate(classes):
        x, y = (i % per_row) * cell + 4, (i // per_row) * 22 + 4
        cv2.rectangle(img, (x, y), (x + 14, y + 14), tuple(int(v) for v in c.color[::-1]), -1)
        cv2.putText(img, c.name, (x + 18, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def confusion_png(conf: np.ndarray, lm: LabelMap, path: str | Path) -> None:
    """Row-normalised confusion matrix (truth rows, predicted columns) of the labelled classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = [c.id for c in lm.classes if c.id != 0 and c.id < conf.shape[0]]
    names = [lm.names[i] for i in ids]
    sub = conf[np.ix_(ids, ids)].astype(np.float64)
    norm = sub / np.maximum(conf[ids].sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=80)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(ids)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(ids)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for i in range(len(ids)):
        for j in range(len(ids)):
            if norm[i, j] >= 0.01:
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_title("confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)


def evaluate_onnx(
    model: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    num_pictures: int = 4,
    threads: int = 2,
    sequences: Collection[str] = (),
) -> dict:
    """Run the served model over a split (only ``sequences``' frames, when given); returns (and
    with ``out`` writes) the report."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    lm = model_label_map(sess, model)
    n_cls = lm.num_classes
    h, w = input_size(sess)
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    pairs = pair_files(data).pairs
    if sequences:
        wanted = set(sequences)
        pairs = [p for p in pairs if sequence_of(p.name) in wanted]
    if not pairs:
        which = f" of sequence(s) {', '.join(sequences)}" if sequences else ""
        raise FileNotFoundError(f"no image/label pairs{which} under {data}")
    pick = (
        set(np.linspace(0, len(pairs) - 1, num_pictures).round().astype(int).tolist())
        if num_pictures
        else set()
    )
    conf = np.zeros((n_cls, n_cls), np.int64)
    pictures: list[tuple[str, np.ndarray]] = []
    seconds = 0.0
    for i, pair in enumerate(pairs):
        frame = read_image_rgb(pair.image)
        truth = read_mask(pair.label)
        x = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)[None]
        t0 = time.perf_counter()
        pred = sess.run([out_name], {in_name: x})[0][0]
        seconds += time.perf_counter() - t0
        if pred.shape != truth.shape:
            pred = cv2.resize(pred, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_NEAREST)
        conf += confusion_matrix(truth, pred, n_cls)
        if i in pick:
            pictures.append((pair.name, side_by_side(frame, truth, pred, lm)))
    res = miou_from_confusion(conf)
    report = {
        "model": str(model),
        "data": str(data),
        "sequences": sorted(sequences),
        "frames": len(pairs),
        "input_size": [h, w],
        "miou": res["miou"],
        "pixel_accuracy": res["pixel_accuracy"],
        "per_class_iou": {lm.names.get(k, str(k)): res["iou"][k] for k in range(1, n_cls)},
        "mean_run_ms": 1000 * seconds / len(pairs),
        "confusion": conf.tolist(),
    }
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        confusion_png(conf, lm, out_dir / "confusion.png")
        for name, img in pictures:
            strip = cv2.vconcat([img, legend(lm, img.shape[1])])
            cv2.imwrite(str(out_dir / f"sample_{name}.png"), strip, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        report["pictures"] = [f"sample_{name}.png" for name, _ in pictures]
    return report
