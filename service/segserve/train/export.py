"""Export a trained checkpoint to the served ONNX contract and check it against torch.

Contract: input ``images`` uint8 (N, H, W, 3) RGB, N dynamic, H and W fixed; output ``labels``
uint8 (N, H, W) class ids. Normalisation and the argmax are inside the graph. Metadata:
``labels`` (label map JSON), ``mean``/``std`` (JSON, 0..255), ``input_size`` ([H, W]), ``name``,
``version``. The label map is also written beside the model as ``<stem>.labels.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from torch import nn

from segserve.labels import LabelMap
from segserve.train.dataset import load_split, load_splits
from segserve.train.model import ModelConfig, SegNetRT, count_parameters, predict_labels

OPSET = 17
DEFAULT_SIZE = (360, 480)


class ServedModel(nn.Module):
    """uint8 NHWC RGB frames -> uint8 class ids, wrapping a SegNetRT."""

    scale: torch.Tensor  # buffers (register_buffer), which nn.Module's typing cannot see
    shift: torch.Tensor

    def __init__(
        self, net: SegNetRT, mean: tuple[float, ...], std: tuple[float, ...], size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.size = size
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / std_t)
        self.register_buffer("shift", -mean_t / std_t)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return predict_labels(self.net(self.normalise(images)), self.size)


def load_checkpoint(path: str | Path) -> tuple[SegNetRT, dict]:
    """A training checkpoint -> (model in eval mode, checkpoint dict)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = SegNetRT(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model.eval(), ck


def labels_json_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".onnx") + ".labels.json")


def export_model(
    net: SegNetRT,
    label_map: LabelMap,
    out: str | Path,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: tuple[int, int] = DEFAULT_SIZE,
    name: str = "segserve",
    version: str = "1",
) -> ServedModel:
    """Write the served ONNX file (and its labels JSON); returns the wrapped torch model."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    served = ServedModel(net, mean, std, size).eval()
    dummy = torch.zeros((1, *size, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            served,
            (dummy,),
            str(out),
            input_names=["images"],
            output_names=["labels"],
            dynamic_axes={"images": {0: "N"}, "labels": {0: "N"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    meta = {
        "labels": label_map.to_json(),
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "input_size": json.dumps(list(size)),
        "name": name,
        "version": version,
        "architecture": json.dumps({"SegNetRT": net.cfg.to_dict(), "parameters": count_parameters(net)}),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "segserve.train"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    label_map.save(labels_json_path(out))
    return served


def onnx_session(path: str | Path, threads: int = 2):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(served: ServedModel, onnx_path: str | Path, frames: np.ndarray, batch: int = 4) -> float:
    """Share of pixels where ONNX Runtime and torch give the same class id (frames: N,H,W,3 RGB)."""
    h, w = served.size
    frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames])
    sess = onnx_session(onnx_path)
    same = total = 0
    for i in range(0, len(frames), batch):
        chunk = frames[i : i + batch]
        with torch.no_grad():
            ref = served.net.predict(served.normalise(torch.from_numpy(chunk))).numpy()
        got = sess.run(["labels"], {"images": chunk})[0]
        same += int(np.count_nonzero(ref == got))
        total += ref.size
    return same / max(total, 1)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    name: str = "segserve",
    version: str = "1",
    check_dir: str | Path | None = None,
    size: tuple[int, int] | None = None,
    min_parity: float = 0.999,
    calibrate_dir: str | Path | None = None,
    calibrate_on_training: bool = False,
) -> dict:
    """Checkpoint -> ONNX; with ``check_dir``, the parity on its real frames (>= ``min_parity``).

    With ``calibrate_dir`` (the training split), per-class logit offsets fitted there are folded
    into the classifier first (see :mod:`segserve.train.calibrate`); ``calibrate_on_training`` fits
    them on the very frames the checkpoint trained on (its held-out sequences stay out).
    """
    net, ck = load_checkpoint(checkpoint)
    tc = ck.get("train_config", {})
    mean = tuple(tc.get("mean", (105.0, 108.0, 110.0)))
    std = tuple(tc.get("std", (78.0, 79.0, 78.0)))
    offsets = None
    calibration_frames, holdout = 0, []
    calibrate_dirs = [str(d) for d in str(calibrate_dir).split(",")] if calibrate_dir else []
    if calibrate_on_training:
        data = tc.get("data", [])
        calibrate_dirs = [data] if isinstance(data, str) else list(data)
        holdout = list(tc.get("holdout", []))
    if calibrate_dirs:
        from segserve.train.calibrate import apply_offsets, fit_offsets, sample_logits

        images, masks = load_splits(calibrate_dirs, holdout, exclude=True)
        m_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        offsets, before, after = fit_offsets(*sample_logits(net, images, masks, m_t, s_t))
        apply_offsets(net, offsets)
        calibration_frames = len(images)
        del images, masks
    size = size or tuple(ck.get("input_size", DEFAULT_SIZE))
    label_map = LabelMap.from_dict(ck["label_map"])
    served = export_model(net, label_map, out, mean, std, size, name, version)
    report: dict = {
        "model": str(out),
        "labels": str(labels_json_path(out)),
        "input_size": list(size),
        "parameters": count_parameters(net),
        "epoch": ck.get("epoch"),
        "best_val_miou": ck.get("best"),
        "size_bytes": Path(out).stat().st_size,
    }
    if offsets is not None:
        report["calibration"] = {
            "data": ",".join(calibrate_dirs),
            "held_out": holdout,
            "frames": calibration_frames,
            "offsets": [round(float(v), 3) for v in offsets],
            "sampled_miou_before": before,
            "sampled_miou_after": after,
        }
    if check_dir:
        frames, _ = load_split(check_dir)
        agree = parity(served, out, frames)
        report["parity"] = agree
        report["parity_frames"] = len(frames)
        report["parity_ok"] = agree >= min_parity
    return report
