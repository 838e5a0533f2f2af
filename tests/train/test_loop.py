from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segserve.train.export import export_checkpoint  # noqa: E402
from segserve.train.loop import TrainConfig, Trainer, class_weights, seg_loss  # noqa: E402


def _cfg(camvid: Path, tmp_path: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        data=[str(camvid / "train")],
        val=str(camvid / "val"),
        runs_dir=str(tmp_path),
        name="tiny",
        max_steps=steps,
        batch=3,
        crop=(144, 192),
        scale=(0.5, 0.5),
        lr=1e-2,
        warmup_steps=2,
        val_every=1,
        model={"stem": [8, 16], "detail": 16, "context": [24, 32], "skip": 8, "head": 16},
    )


def test_tiny_training_run_learns_and_resumes(camvid: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(camvid, tmp_path, 16), quiet=True)
    losses = [trainer.train_step(np.arange(3)) for _ in range(12)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    trainer.run()
    out = tmp_path / "tiny"
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert trainer.step == 16 and "val_miou" in trainer.history[-1]
    resumed = Trainer(_cfg(camvid, tmp_path, 18), resume=True, quiet=True)
    assert resumed.step == 16
    resumed.run()
    assert resumed.step == 18


def test_weighted_losses_ignore_background() -> None:
    masks = np.array([[[1, 1, 1, 2]]], np.uint8)
    w = class_weights(masks, 3, 1.0)
    assert w[0] == 0 and w[2] > w[1]
    logits = torch.randn(1, 3, 1, 4)
    target = torch.tensor([[[0, 1, 1, 2]]])
    for mode in ("ce", "ohem"):
        loss = seg_loss(logits, target, w, mode, 0.7)
        assert torch.isfinite(loss) and float(loss) > 0
    all_bg = seg_loss(logits, torch.zeros_like(target), w, "ohem", 0.7)
    assert float(all_bg) == 0.0


def test_holdout_sequence_selects_checkpoints_and_is_never_trained_on(camvid: Path, tmp_path: Path) -> None:
    cfg = _cfg(camvid, tmp_path, 2)
    cfg.data, cfg.val, cfg.holdout = [str(camvid / "train"), str(camvid / "val")], None, ["0016E5"]
    cfg.augment, cfg.rare_p = "strong", 0.5
    trainer = Trainer(cfg, quiet=True)
    assert trainer.val is not None
    assert len(trainer.images) == 4 and len(trainer.val[0]) == 4  # 0016E5: 1+1 in train/, 2 in val/
    assert trainer.aug.rare and trainer.aug.rare_p == 0.5
    trainer.run()
    assert "val_miou" in trainer.history[-1] and (tmp_path / "tiny" / "best.pt").is_file()
    # the calibration offsets are fitted on the trained-on frames only
    report = export_checkpoint(tmp_path / "tiny" / "best.pt", tmp_path / "m.onnx", calibrate_on_training=True)
    assert report["calibration"]["held_out"] == ["0016E5"] and report["calibration"]["frames"] == 4


def test_weight_average_follows_the_weights_slowly_and_is_what_is_saved(camvid: Path, tmp_path: Path) -> None:
    cfg = _cfg(camvid, tmp_path, 6)
    cfg.ema = 0.9
    trainer = Trainer(cfg, quiet=True)
    assert trainer.average is not None
    start = {k: v.clone() for k, v in trainer.average.model.state_dict().items()}
    trainer.run()
    raw, avg = trainer.model.state_dict(), trainer.average.model.state_dict()
    moved = [k for k in avg if avg[k].is_floating_point() and not torch.equal(avg[k], start[k])]
    assert moved, "the average never moved"
    # the average lies between where the weights started and where they are now, not on either
    w = "classifier.weight"
    assert not torch.equal(avg[w], raw[w]) and not torch.equal(avg[w], start[w])
    assert torch.equal(avg["stem.0.1.num_batches_tracked"], raw["stem.0.1.num_batches_tracked"])
    saved = torch.load(tmp_path / "tiny" / "last.pt", map_location="cpu", weights_only=False)
    assert torch.equal(saved["model"][w], avg[w]) and torch.equal(saved["trained"][w], raw[w])
    # resuming restores both the trained weights and their average
    resumed = Trainer(cfg, resume=True, quiet=True)
    assert resumed.average is not None
    assert torch.equal(resumed.model.state_dict()[w], raw[w])
    assert torch.equal(resumed.average.model.state_dict()[w], avg[w])
