"""The training loop: time-budgeted, checkpointed, resumable; keeps the best checkpoint by val mIoU."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from segserve.labels import LabelMap
from segserve.train.augment import IGNORE, Augmenter, Photometric, class_mix
from segserve.train.dataset import class_histogram, find_label_map, load_split, load_splits
from segserve.train.metrics import confusion_matrix, miou_from_confusion
from segserve.train.model import ModelConfig, SegNetRT

MEAN = (105.0, 108.0, 110.0)  # RGB, 0..255 scale (CamVid train statistics)
STD = (78.0, 79.0, 78.0)


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint."""

    data: list[str]  # split folders trained on (frames of ``holdout`` sequences excepted)
    val: str | None = None  # a separate val split folder, when no sequence is held out
    holdout: list[str] = field(default_factory=list)  # sequences kept out of training, for selection
    name: str = "camvid"
    runs_dir: str = "runs"
    max_minutes: float = 75.0
    max_epochs: int = 10_000
    max_steps: int = 0  # 0: no limit (tests use a few steps)
    batch: int = 8
    crop: tuple[int, int] = (288, 384)
    scale: tuple[float, float] = (0.5, 2.0)
    lr: float = 4e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    loss: str = "ohem"  # "ohem" or "ce"; both class-weighted
    ohem_thresh: float = 0.7
    class_weight_power: float = 0.5
    aux_weight: float = 0.4
    val_every: int = 2
    augment: str = "basic"  # "basic" (version 2: colour jitter) or "strong" (Photometric.strong)
    rare_p: float = 0.0  # share of crops placed around a pixel of a rare class
    class_mix: float = 0.0  # share of crops that get half the classes of another crop pasted on
    ema: float = 0.0  # decay of the weight average that is evaluated and saved; 0: the raw weights
    seed: int = 0
    threads: int = 2
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    model: dict = field(default_factory=dict)


def class_weights(masks: np.ndarray, num_classes: int, power: float) -> torch.Tensor:
    """(median frequency / frequency) ** power over the non-background classes; background gets 0."""
    hist = class_histogram(masks, 256)[:num_classes].astype(np.float64)
    freq = hist[1:] / max(hist[1:].sum(), 1.0)
    present = freq > 0
    med = np.median(freq[present]) if present.any() else 1.0
    w = np.ones(num_classes)
    w[0] = 0.0
    w[1:][present] = (med / freq[present]) ** power
    return torch.tensor(w, dtype=torch.float32)


def rare_classes(masks: np.ndarray, num_classes: int) -> list[int]:
    """Classes (background aside) with under half the median class's pixel share."""
    hist = class_histogram(masks, 256)[1:num_classes].astype(np.float64)
    present = hist > 0
    if not present.any():
        return []
    med = np.median(hist[present])
    return [k + 1 for k in np.flatnonzero(present & (hist < 0.5 * med)).tolist()]


def seg_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, mode: str, thresh: float
) -> torch.Tensor:
    """Class-weighted cross-entropy ignoring background; ``ohem`` keeps the hard pixels only.

    OHEM keeps pixels whose true-class probability is below ``thresh``, and at least 1/8 of the
    labelled pixels (the hardest), as in BiSeNet.
    """
    pix = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE, reduction="none").flatten()
    valid = (target != IGNORE).flatten()
    pix = pix[valid]
    if pix.numel() == 0:
        return logits.sum() * 0.0
    if mode == "ce":
        return pix.mean()
    w_pix = weight[target.flatten()[valid]]
    hard = pix > -math.log(thresh) * w_pix
    n_min = max(pix.numel() // 8, 1)
    if int(hard.sum()) < n_min:
        return pix.topk(n_min).values.mean()
    return pix[hard].mean()


def to_tensor(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> normalised float NCHW (channels-last memory)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay to 1% over the run's progress (time or epochs)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def evaluate_torch(
    model: SegNetRT, images: np.ndarray, masks: np.ndarray, cfg: TrainConfig, num_classes: int
) -> dict:
    """mIoU of the torch model on in-memory frames, predicted as the served model does."""
    was_training = model.training
    model.eval()
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    conf = np.zeros((num_classes, num_classes), np.int64)
    for i in range(0, len(images), 4):
        pred = model.predict(to_tensor(images[i : i + 4], mean, std)).numpy()
        conf += confusion_matrix(masks[i : i + 4], pred, num_classes)
    model.train(was_training)
    return miou_from_confusion(conf)


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics.

    The averaged weights generalise better than the last step's and their val curve is far less
    noisy, so the checkpoint chosen on it is chosen less by luck. The decay ramps up from 0.1 over
    the first steps (as in TensorFlow's ExponentialMovingAverage) so the random start fades fast.
    """

    def __init__(self, model: SegNetRT, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs, 1.0 - d)
            else:
                mine.copy_(theirs)


class Trainer:
    """Builds model, data and optimiser from a TrainConfig; ``run()`` trains until the budget ends."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> None:
        self.cfg = cfg
        self.quiet = quiet
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.runs_dir) / cfg.name
        self.out.mkdir(parents=True, exist_ok=True)
        lm_path = find_label_map(cfg.data[0])
        if lm_path is None:
            raise FileNotFoundError(f"no classes.json in {cfg.data[0]} or its parent")
        self.label_map = LabelMap.load(lm_path)
        self.num_classes = self.label_map.num_classes
        self.images, self.masks = load_splits(cfg.data, cfg.holdout, exclude=True)
        if cfg.holdout:
            self.val: tuple[np.ndarray, np.ndarray] | None = load_splits(cfg.data, cfg.holdout)
        else:
            self.val = load_split(cfg.val) if cfg.val else None
        self.model_cfg = ModelConfig(**{**cfg.model, "num_classes": self.num_classes})
        # Module.to takes memory_format at run time; torch's overloads of `to` leave it out
        self.model = SegNetRT(self.model_cfg).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.average = WeightAverage(self.model, cfg.ema) if cfg.ema > 0 else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.weight = class_weights(self.masks, self.num_classes, cfg.class_weight_power)
        self.rng = np.random.default_rng(cfg.seed)
        photometric = Photometric.strong() if cfg.augment == "strong" else Photometric.basic()
        rare = rare_classes(self.masks, self.num_classes)
        self.aug = Augmenter(
            cfg.crop, cfg.scale, rng=self.rng, photometric=photometric, rare=rare, rare_p=cfg.rare_p
        )
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1)
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0
        self.best = -1.0
        self.history: list[dict] = []
        if resume and (self.out / "last.pt").exists():
            self._load(self.out / "last.pt")

    # --- checkpoints ----------------------------------------------------------------------
    @property
    def served(self) -> SegNetRT:
        """The weights evaluated, kept as best and exported: the average when there is one."""
        return self.average.model if self.average else self.model

    def _state(self) -> dict:
        return {
            "model": self.served.state_dict(),
            "trained": self.model.state_dict() if self.average else None,
            "opt": self.opt.state_dict(),
            "model_config": self.model_cfg.to_dict(),
            "train_config": asdict(self.cfg),
            "label_map": self.label_map.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "history": self.history,
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def _load(self, path: Path) -> None:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        trained = ck.get("trained") if self.average is not None else None
        self.model.load_state_dict(ck["model"] if trained is None else trained)
        if self.average is not None:
            self.average.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.epoch, self.step, self.elapsed = ck["epoch"], ck["step"], ck["elapsed"]
        self.best, self.history = ck["best"], ck["history"]
        self.rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        self.log(f"resumed from {path}: epoch {self.epoch}, step {self.step}, {self.elapsed / 60:.1f} min")

    def save(self, name: str) -> Path:
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        torch.save(self._state(), tmp)
        tmp.replace(path)
        return path

    def log(self, msg: str) -> None:
        if not self.quiet:
            tqdm.write(msg)
        with open(self.out / "train.log", "a") as f:
            f.write(msg + "\n")

    # --- training -------------------------------------------------------------------------
    def progress(self) -> float:
        by_time = self.elapsed / (60 * self.cfg.max_minutes)
        by_epoch = self.epoch / self.cfg.max_epochs
        by_step = self.step / self.cfg.max_steps if self.cfg.max_steps else 0.0
        return max(by_time, by_epoch, by_step)

    def train_step(self, idx: np.ndarray) -> float:
        crops = [self.aug.sample(self.images[i], self.masks[i]) for i in idx]
        images, masks = np.stack([c.image for c in crops]), np.stack([c.mask for c in crops])
        rows = torch.from_numpy(np.stack([c.rows for c in crops]))
        if self.cfg.class_mix > 0:
            images, masks = class_mix(images, masks, self.rng, self.cfg.class_mix)
        x = to_tensor(images, self.mean, self.std)
        y = torch.from_numpy(masks).long()
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.cfg, self.step, self.progress())
        logits, aux = self.model(x, rows)
        c = self.cfg
        loss = seg_loss(logits, y, self.weight, c.loss, c.ohem_thresh)
        if c.aux_weight > 0:
            loss = loss + c.aux_weight * seg_loss(aux, y, self.weight, c.loss, c.ohem_thresh)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.average is not None:
            self.average.update(self.model, self.step)
        self.step += 1
        return float(loss.detach())

    def run(self) -> dict:
        """Train until the time/epoch/step budget is spent; returns the last history entry."""
        c = self.cfg
        self.model.train()
        held = (
            f", {len(self.val[0])} held-out frames of {','.join(c.holdout)}" if c.holdout and self.val else ""
        )
        self.log(f"training {self.model_cfg} on {len(self.images)} frames{held} -> {self.out}")
        losses: list[float] = []
        while self.progress() < 1.0:
            order = self.rng.permutation(len(self.images))
            batches = [order[i : i + c.batch] for i in range(0, len(order) - c.batch + 1, c.batch)]
            bar = tqdm(batches, desc=f"epoch {self.epoch + 1}", disable=self.quiet, leave=False)
            losses = []
            for idx in bar:
                t0 = time.perf_counter()
                losses.append(self.train_step(idx))
                self.elapsed += time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{self.opt.param_groups[0]['lr']:.2e}"
                )
                if self.progress() >= 1.0:
                    break
            self.epoch += 1
            entry = {
                "epoch": self.epoch,
                "step": self.step,
                "minutes": round(self.elapsed / 60, 2),
                "loss": float(np.mean(losses)) if losses else float("nan"),
            }
            done = self.progress() >= 1.0
            if self.val is not None and (self.epoch % c.val_every == 0 or done):
                res = evaluate_torch(self.served, *self.val, c, self.num_classes)
                entry["val_miou"] = res["miou"]
                if res["miou"] > self.best:
                    self.best = res["miou"]
                    self.save("best.pt")
            self.history.append(entry)
            self.log(json.dumps(entry))
            self.save("last.pt")
        if self.val is None:
            self.save("best.pt")
        return self.history[-1] if self.history else {}
