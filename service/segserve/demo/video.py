"""The headless demo's video: H.264 in MP4 (or VP9 in WebM), written through PyAV, so browsers play it.

OpenCV's writer in opencv-python wheels can only make MPEG-4 Part 2 (``mp4v``), which no browser
plays. PyAV's wheels bundle FFmpeg with libx264 and libvpx: H.264 (x264's ``ultrafast`` preset: the
demo encodes on the machine whose latency it measures, so the encoder must stay cheap, about as
cheap as ``mp4v`` was), yuv420p (the only chroma layout every browser decodes) and ``+faststart``
(the index before the data, so playback starts before the whole file has arrived).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.container
import numpy as np

# (encoder, container suffix, FFmpeg options), in order of preference; every entry plays in the
# current Chrome, Firefox and Safari. The first one the installed FFmpeg has is used.
ENCODERS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("libx264", ".mp4", {"preset": "ultrafast", "crf": "23"}),
    ("libopenh264", ".mp4", {}),
    ("libvpx-vp9", ".webm", {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
)  # no AV1: its CPU encoders cost several times H.264's at the same speed setting
# What the container probe accepts as browser-playable: container format -> codecs.
BROWSER_PLAYABLE = {"mp4": {"h264", "vp9", "av1"}, "webm": {"vp8", "vp9", "av1"}}


def pick_encoder(name: str | None = None) -> tuple[str, str, dict[str, str]]:
    """``name``'s entry, or the first of ``ENCODERS`` this FFmpeg build has; OSError when none is there."""
    available = av.codecs_available
    for entry in ENCODERS:
        if entry[0] in available and name in (None, entry[0]):
            return entry
    names = name or ", ".join(e[0] for e in ENCODERS)
    raise OSError(f"PyAV's FFmpeg has none of the browser-playable encoders ({names}); reinstall `av`")


def _rate(fps: float) -> Fraction:
    """29.97 -> 30000/1001: a frame rate as the exact fraction FFmpeg wants."""
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Side by side (camera frame | overlay) at the source's frame rate; ``path``'s suffix follows the codec.

    Frames are BGR uint8 of any size; each half is resized to the first frame's size. yuv420p needs an
    even width and height, so an odd size loses its last row or column.
    """

    def __init__(self, path: Path, fps: float, frame_size: tuple[int, int], encoder: str | None = None):
        self.codec, suffix, options = pick_encoder(encoder)
        self.path = path.with_suffix(suffix)
        width, height = frame_size
        self.half = (width - width % 2, height - height % 2)
        self.size = (self.half[0] * 2, self.half[1])
        movflags = {"movflags": "+faststart"} if suffix == ".mp4" else {}
        try:
            container = av.open(str(self.path), mode="w", options=movflags)
        except av.FFmpegError as exc:
            raise OSError(f"cannot write {self.path}: {exc}") from None
        try:
            # every codec in ENCODERS is a video encoder
            self.stream = cast(
                av.VideoStream, container.add_stream(self.codec, rate=_rate(fps), options=options)
            )
        except Exception:
            container.close()
            raise
        self.container: av.container.OutputContainer | None = container
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, frame: np.ndarray, right: np.ndarray) -> None:
        import cv2

        halves = []
        for image, interpolation in ((frame, cv2.INTER_AREA), (right, cv2.INTER_NEAREST)):
            if image.shape[1::-1] != self.half:
                image = cv2.resize(image, self.half, interpolation=interpolation)
            halves.append(image)
        picture = av.VideoFrame.from_ndarray(np.hstack(halves), format="bgr24")
        picture.pts = self.frames
        assert self.container is not None, "write() after close()"
        self.container.mux(self.stream.encode(picture))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder's buffered frames and write the index (at the front: faststart)."""
        if self.container is None:
            return
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()
            self.container = None


@dataclass(frozen=True)
class VideoInfo:
    container: str  # FFmpeg's demuxer names, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    codec: str  # the format's name ("h264", "vp9"), whichever decoder read it
    pix_fmt: str
    width: int
    height: int
    frames: int  # decoded, not the header's claim
    fps: float
    faststart: bool  # MP4: the moov atom comes before mdat

    @property
    def browser_playable(self) -> bool:
        formats = set(self.container.split(","))
        codecs = set().union(*(BROWSER_PLAYABLE.get(f, set()) for f in formats))
        mp4_ok = "mp4" not in formats or self.faststart
        return self.codec in codecs and self.pix_fmt == "yuv420p" and mp4_ok


def _moov_before_mdat(path: Path) -> bool:
    """Walk the top-level MP4 boxes: True when ``moov`` comes before ``mdat``."""
    with path.open("rb") as fh:
        while header := fh.read(8):
            if len(header) < 8:
                return False
            size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if kind == b"moov":
                return True
            if kind == b"mdat":
                return False
            if size == 1:
                size = int.from_bytes(fh.read(8), "big") - 8
            elif size < 8:
                return False
            fh.seek(size - 8, 1)
    return False


def probe(path: Path) -> VideoInfo:
    """Open ``path`` with FFmpeg and decode every frame: what a player would see."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return VideoInfo(
            container=container.format.name,
            codec=stream.codec_context.codec.canonical_name,  # "av1", not the decoder "libdav1d"
            pix_fmt=stream.codec_context.pix_fmt or "",
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frames=frames,
            fps=float(stream.average_rate or 0),
            faststart="mp4" in container.format.name.split(",") and _moov_before_mdat(path),
        )
