"""Models side by side on an unlabelled video: how much of the frame's top band each labels as sky,
and a picture of a few frames.

The demo clip has no labels, but its top fifth is clear sky in every frame: the share of those pixels
labelled sky is a plain, honest measure of one failure users see (version 2 painted blue sky as
"building").

    python -m segserve.train.clip_compare --model v2=old.onnx --model v3=new.onnx \\
        --video demo/solidWhiteRight.mp4 --out models/eval
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from segserve.labels import LabelMap
from segserve.train.evaluate import input_size, legend, model_label_map

TOP_BAND = 0.2  # the top fifth of the frame


@dataclass
class ClipModel:
    """One ONNX model of the served contract, run on CPU."""

    name: str
    path: Path

    def __post_init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.labels: LabelMap = model_label_map(self.session, self.path)
        self.hw = input_size(self.session)
        self._in = self.session.get_inputs()[0].name

    def predict(self, frame_rgb: np.ndarray) -> np.ndarray:
        h, w = self.hw
        x = cv2.resize(frame_rgb, (w, h), interpolation=cv2.INTER_LINEAR)[None]
        return self.session.run(None, {self._in: x})[0][0]


def clip_frames(video: Path) -> list[np.ndarray]:
    """Every frame of the video, RGB."""
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def class_id(labels: LabelMap, name: str) -> int:
    for c in labels.classes:
        if c.name == name:
            return c.id
    raise ValueError(f"the model has no class named {name!r}")


def top_band_counts(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of the top band given to each class id."""
    band = pred[: max(1, round(pred.shape[0] * TOP_BAND))]
    return np.bincount(band.ravel(), minlength=num_classes)


def picture(frames: list[np.ndarray], preds: dict[str, list[np.ndarray]], labels: LabelMap, width: int = 320):
    """BGR grid: a row per frame, columns frame | each model's overlay, captions and a legend."""
    rows = []
    for i, frame in enumerate(frames):
        h = round(frame.shape[0] * width / frame.shape[1])
        base = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), (width, h), interpolation=cv2.INTER_AREA)
        tiles = [_caption(base, "frame")]
        for name, masks in preds.items():
            colours = cv2.resize(labels.colorize(masks[i]), (width, h), interpolation=cv2.INTER_NEAREST)
            tiles.append(_caption(cv2.addWeighted(base, 0.4, colours, 0.6, 0.0), name))
        rows.append(cv2.hconcat(tiles))
    grid = cv2.vconcat(rows)
    return cv2.vconcat([grid, legend(labels, grid.shape[1])])


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    cv2.putText(tile, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def compare(models: list[ClipModel], video: Path, out: Path, shown: int = 3, sky: str = "sky") -> dict:
    """Run every model on every frame; write ``demo_compare.png`` and ``demo_sky.json`` to ``out``."""
    frames = clip_frames(video)
    if not frames:
        raise ValueError(f"{video} has no frames")
    picks = np.linspace(0, len(frames) - 1, shown + 2).round().astype(int)[1:-1].tolist()
    report: dict = {"video": str(video), "frames": len(frames), "top_band": TOP_BAND, "models": {}}
    preds: dict[str, list[np.ndarray]] = {}
    for model in models:
        sky_id = class_id(model.labels, sky)
        counts = np.zeros(model.labels.num_classes, np.int64)
        preds[model.name] = []
        for i, frame in enumerate(frames):
            pred = model.predict(frame)
            counts += top_band_counts(pred, model.labels.num_classes)[: len(counts)]
            if i in picks:
                preds[model.name].append(pred)
        shares = {
            model.labels.names.get(int(k), str(k)): round(float(counts[k]) / counts.sum(), 4)
            for k in np.argsort(-counts, kind="stable")
            if counts[k]
        }
        report["models"][model.name] = {
            "path": str(model.path),
            "top_band_sky_share": round(float(counts[sky_id]) / counts.sum(), 4),
            "top_band_shares": shares,
        }
    out.mkdir(parents=True, exist_ok=True)
    report["picture_frames"] = picks
    cv2.imwrite(str(out / "demo_compare.png"), picture([frames[i] for i in picks], preds, models[0].labels))
    (out / "demo_sky.json").write_text(json.dumps(report, indent=1))
    return report


def _named_model(text: str) -> ClipModel:
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH of an ONNX file, got {text!r}")
    return ClipModel(name, Path(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=_named_model, action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("eval-output"))
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"no video at {args.video}")
    report = compare(args.model, args.video, args.out)
    for name, m in report["models"].items():
        print(f"{name}: top fifth labelled sky {100 * m['top_band_sky_share']:.1f}%  ({m['path']})")
    print(f"wrote {args.out / 'demo_compare.png'} and {args.out / 'demo_sky.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
