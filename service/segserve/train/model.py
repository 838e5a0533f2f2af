"""SegNetRT: a small two-branch real-time segmentation network (in the spirit of BiSeNet / DDRNet).

Layout (strides relative to the input):

- stem: two stride-2 3x3 convolutions down to 1/4, where a few channels are kept as a boundary skip;
- detail branch: plain 3x3 convolutions at 1/8 that keep spatial detail (poles, signs, people);
- context branch: residual blocks down to 1/16 and 1/32 plus a global-context vector, fused back
  top-down into the detail branch at 1/8;
- head: 3x3 conv at 1/8, upsampled to 1/4 and refined with the 1/4 skip, then a 1x1 classifier.
  Training upsamples the logits bilinearly to the input size; inference takes the argmax at half
  resolution (see :func:`predict_labels`). An auxiliary head on the 1/16 context features helps
  training from scratch; it is used only in training mode.

Plain (not depthwise) convolutions are used on purpose: on a CPU they run far closer to peak than
depthwise ones at these channel counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Widths of the network; ``num_classes`` includes background (id 0)."""

    num_classes: int = 12
    stem: tuple[int, int] = (16, 32)
    detail: int = 48
    context: tuple[int, int] = (64, 128)
    skip: int = 16
    head: int = 48
    blocks: tuple[int, int] = (2, 1)
    # "fixed": the input is used as normalised with the dataset's mean and std; "image": each frame
    # is also standardised per channel by its own mean and std, so exposure, contrast and white
    # balance (dusk against noon, one camera against another) do not move the features.
    input_norm: str = "fixed"
    # an extra input channel holding each pixel's height in the frame (0 top, 1 bottom): a driving
    # camera sees sky above and road below, whatever the street, and the network may use it
    rows: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(
            num_classes=int(data["num_classes"]),
            stem=tuple(data["stem"]),
            detail=int(data["detail"]),
            context=tuple(data["context"]),
            skip=int(data["skip"]),
            head=int(data["head"]),
            blocks=tuple(data.get("blocks", (2, 2))),
            input_norm=str(data.get("input_norm", "fixed")),
            rows=bool(data.get("rows", False)),
        )


class ConvBNReLU(nn.Sequential):
    """3x3 (or kxk) convolution, batch norm, optional ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Basic residual block (two 3x3 convs); a strided 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cout, stride)
        self.conv2 = ConvBNReLU(cout, cout, relu=False)
        self.proj = (
            ConvBNReLU(cin, cout, stride, k=1, relu=False) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.proj(x))


def standardise_per_image(x: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """Each frame and channel to zero mean and unit standard deviation over its own pixels."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=(2, 3), keepdim=True)
    return centred / torch.sqrt(var + eps)


def row_channel(x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 1, H, W): each pixel's height in its frame, pixel centres from 0 (top) to 1 (bottom)."""
    n, _, h, w = x.shape
    if rows is None:
        rows = ((torch.arange(h, dtype=x.dtype) + 0.5) / h).expand(n, h)
    return rows.to(x.dtype).view(n, 1, h, 1).expand(n, 1, h, w)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SegNetRT(nn.Module):
    """Float NCHW normalised input -> logits.

    Training mode returns ``(logits, aux_logits)`` at input resolution; eval mode returns the
    logits at 1/4 resolution (use :meth:`predict` or :func:`predict_labels` for class ids).
    """

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        s1, s2 = cfg.stem
        c16, c32 = cfg.context
        self.stem = nn.Sequential(ConvBNReLU(4 if cfg.rows else 3, s1, 2), ConvBNReLU(s1, s2, 2))
        self.skip = ConvBNReLU(s2, cfg.skip, k=1, relu=False)
        self.detail = nn.Sequential(ConvBNReLU(s2, cfg.detail, 2), ConvBNReLU(cfg.detail, cfg.detail))
        b16, b32 = cfg.blocks
        self.ctx16 = nn.Sequential(
            ResBlock(cfg.detail, c16, 2), *(ResBlock(c16, c16) for _ in range(b16 - 1))
        )
        self.ctx32 = nn.Sequential(ResBlock(c16, c32, 2), *(ResBlock(c32, c32) for _ in range(b32 - 1)))
        self.gctx = ConvBNReLU(c32, c32, k=1)
        self.lat32 = ConvBNReLU(c32, c16, k=1, relu=False)
        self.fuse16 = ConvBNReLU(c16, c16)
        self.lat16 = ConvBNReLU(c16, cfg.detail, k=1, relu=False)
        self.fuse8 = ConvBNReLU(cfg.detail, cfg.head)
        self.reduce8 = ConvBNReLU(cfg.head, cfg.skip, k=1, relu=False)
        self.refine4 = ConvBNReLU(cfg.skip, cfg.skip)
        self.classifier = nn.Conv2d(cfg.skip, cfg.num_classes, 1)
        self.aux = nn.Sequential(ConvBNReLU(c16, 64), nn.Conv2d(64, cfg.num_classes, 1))
        if cfg.input_norm not in ("fixed", "image"):
            raise ValueError(f"input_norm must be 'fixed' or 'image', not {cfg.input_norm!r}")

    def forward(
        self, x: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``rows`` (N, H): where each input row lies in its whole frame (0 top, 1 bottom), for
        crops; by default the input is a whole frame. Used only when the config has ``rows``."""
        if self.cfg.input_norm == "image":
            x = standardise_per_image(x)
        if self.cfg.rows:
            x = torch.cat([x, row_channel(x, rows)], dim=1)
        f4 = self.stem(x)
        d8 = self.detail(f4)
        c16 = self.ctx16(d8)
        c32 = self.ctx32(c16)
        c32 = c32 + self.gctx(c32.mean(dim=(2, 3), keepdim=True))
        c16f = self.fuse16(c16 + _up(self.lat32(c32), c16))
        y8 = self.fuse8(F.relu(d8 + _up(self.lat16(c16f), d8)))
        y4 = self.refine4(F.relu(_up(self.reduce8(y8), f4) + self.skip(f4)))
        logits4 = self.classifier(y4)
        if self.training:
            return _up(logits4, x), _up(self.aux(c16f), x)
        return logits4

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised NCHW float -> uint8 class ids (N, H, W), as the served model computes them."""
        return predict_labels(self(x), (x.shape[-2], x.shape[-1]))


def predict_labels(logits4: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1/4-resolution logits -> uint8 class ids (N, H, W), argmax taken at half resolution.

    Upsampling 12 logit planes to full resolution and taking the argmax there costs more than the
    whole network on a CPU; taking it at half resolution and repeating each label 2x2 costs a
    fraction and changes only boundary pixels. The served ONNX graph does exactly this.
    """
    h, w = size
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    half = F.interpolate(logits4, size=(h2, w2), mode="bilinear", align_corners=False)
    ids = half.argmax(1).to(torch.uint8)
    n = ids.shape[0]
    full = ids[:, :, None, :, None].expand(n, h2, 2, w2, 2).reshape(n, h2 * 2, w2 * 2)
    return full[:, :h, :w]


def count_parameters(model: nn.Module, inference_only: bool = True) -> int:
    """Parameters used at inference (the auxiliary head excluded by default)."""
    return sum(
        p.numel() for n, p in model.named_parameters() if not (inference_only and n.startswith("aux."))
    )
