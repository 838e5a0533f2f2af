"""Plain data that crosses the service's layers: frame requests, output options, timing, results.

No protobuf, no grpc, no numpy-heavy logic: the edges translate to and from these, the pipeline and
sessions work on them, and ``segserve.client`` imports them without pulling in the engine.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum

from segserve.errors import InvalidOptions

UNARY_LANE = "unary"


class PixelFormat(Enum):
    BGR = "bgr"
    RGB = "rgb"


class MaskFormat(Enum):
    NONE = "none"
    RAW = "raw"
    PNG = "png"
    PNG_RGB = "png_rgb"  # the training format's (k,k,k) image


class MaskResolution(Enum):
    FRAME = "frame"
    MODEL = "model"


class OverlayFormat(Enum):
    NONE = "none"
    JPEG = "jpeg"
    PNG = "png"


@dataclass(frozen=True)
class RawFrame:
    width: int
    height: int
    format: PixelFormat
    data: bytes


@dataclass(frozen=True)
class OutputOptions:
    mask: MaskFormat = MaskFormat.PNG
    mask_resolution: MaskResolution = MaskResolution.FRAME
    overlay: OverlayFormat = OverlayFormat.NONE
    overlay_alpha: float = 0.5
    jpeg_quality: int = 85
    coverage: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise InvalidOptions(f"overlay_alpha must be within 0..1, got {self.overlay_alpha}")
        if not 1 <= self.jpeg_quality <= 100:
            raise InvalidOptions(f"overlay_jpeg_quality must be within 1..100, got {self.jpeg_quality}")


@dataclass
class FrameRequest:
    """One frame to segment: exactly one of ``encoded`` (JPEG/PNG bytes) and ``raw`` is set."""

    frame_id: str = ""
    encoded: bytes | None = None
    raw: RawFrame | None = None
    options: OutputOptions = field(default_factory=OutputOptions)
    deadline: float | None = None  # time.monotonic() seconds
    lane: Hashable = UNARY_LANE  # batcher fairness: one lane per stream, one for all unary calls
    capture_time_us: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes this request holds (what admission charges it)."""
        frame = len(self.encoded) if self.encoded is not None else 0
        if self.raw is not None:
            frame += len(self.raw.data)
        return frame + len(self.frame_id)


@dataclass
class Timing:
    decode_us: int = 0
    queue_us: int = 0
    preprocess_us: int = 0
    inference_us: int = 0
    postprocess_us: int = 0
    encode_us: int = 0
    total_us: int = 0
    batch_size: int = 0


@dataclass(frozen=True)
class EncodedImage:
    width: int
    height: int
    format: MaskFormat | OverlayFormat
    data: bytes


@dataclass(frozen=True)
class Coverage:
    class_id: int
    name: str
    fraction: float


@dataclass
class FrameResult:
    frame_id: str
    model: str
    timing: Timing
    mask: EncodedImage | None = None
    overlay: EncodedImage | None = None
    coverage: list[Coverage] = field(default_factory=list)
    capture_time_us: int = 0
    labels: object | None = None  # the (h, w) uint8 ids at the model's size, for in-process callers

    @property
    def nbytes(self) -> int:
        """Bytes of encoded output this result holds (what a waiting response costs)."""
        total = len(self.frame_id)
        for image in (self.mask, self.overlay):
            if image is not None:
                total += len(image.data)
        return total
