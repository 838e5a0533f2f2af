"""JPEG decode on the GPU with nvImageCodec (nvJPEG and the hardware JPEG decoders of A100/H100/H200),
straight into the engine's bound input buffer: only the compressed bytes cross PCIe and the CPU does
no per-pixel work. The graph then converts BGR -> RGB, resizes and normalises (``--resize-in-graph``).

nvImageCodec comes with the ``gpu`` extra and is imported only when a GPU provider runs the model.
Where it or a GPU is missing the CPU path is used, and ``open_decoder`` says why.

How the pipeline uses it (``Engine.decoder`` is not None, no overlay wanted): a JPEG frame is queued
as ``EncodedFrame.from_jpeg(data)`` instead of decoded pixels, the batcher groups frames by
``batch_key`` (never pixels and JPEGs in one batch), and runs a batch of them with
``engine.run_encoded(frames)`` instead of ``engine.run(np.stack(...))``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from segserve.codec import Limits, decode_encoded, jpeg_size
from segserve.errors import FrameTooLarge, InvalidFrame, SegserveError

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class EncodedFrame:
    """A JPEG queued for decode on the device with its batch. ``shape`` is (height, width, 3) from the
    header, so a batcher that groups frames by ``frame.shape`` groups these unchanged."""

    data: bytes
    shape: tuple[int, int, int]

    @classmethod
    def from_jpeg(cls, data: bytes, limits: Limits | None = None) -> EncodedFrame:
        """Check what the CPU path checks before decoding (header, ``limits``, scans; and the end
        marker), decode nothing. Raises InvalidFrame or FrameTooLarge as ``codec.decode_encoded`` would."""
        limits = limits or Limits()
        if len(data) > limits.max_frame_bytes:
            raise FrameTooLarge(f"frame is {len(data)} bytes, over the limit of {limits.max_frame_bytes}")
        if not data.startswith(JPEG_MAGIC):
            raise InvalidFrame(f"not a JPEG (starts with {data[:8].hex()})")
        width, height = jpeg_size(data)
        scans = data.count(b"\xff\xda")
        if scans > limits.max_jpeg_scans:
            raise InvalidFrame(f"JPEG has {scans} scans, over the limit of {limits.max_jpeg_scans}")
        # The CPU path decodes strictly; nvJPEG may fill a cut-off frame instead: refuse it up front.
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise InvalidFrame(f"truncated JPEG ({len(data)} bytes): no end-of-image marker")
        if width <= 0 or height <= 0:
            raise InvalidFrame(f"JPEG has zero size ({width}x{height})")
        if max(width, height) > limits.max_side or width * height > limits.max_pixels:
            raise FrameTooLarge(
                f"JPEG is {width}x{height}, over the limit of {limits.max_pixels / 1e6:.1f} Mpx "
                f"and {limits.max_side} px a side"
            )
        return cls(data, (height, width, 3))


def batch_key(frame: np.ndarray | EncodedFrame) -> tuple[bool, tuple[int, ...]]:
    """What frames must share to run in one batch: the kind (pixels or JPEG bytes) and the shape."""
    return isinstance(frame, EncodedFrame), tuple(frame.shape)


def decode_on_cpu(jpegs: Sequence[bytes], hw: tuple[int, int]) -> tuple[np.ndarray, list[str | None]]:
    """The CPU path (``codec.decode_encoded``) for a batch: BGR uint8 [N, h, w, 3], and per frame None
    or why it failed (its pixels are then zeros)."""
    height, width = hw
    batch = np.zeros((len(jpegs), height, width, 3), np.uint8)
    errors: list[str | None] = []
    for i, data in enumerate(jpegs):
        try:
            image = decode_encoded(data)
        except SegserveError as exc:
            errors.append(str(exc))
            continue
        if image.shape != (height, width, 3):
            errors.append(f"JPEG decoded to {image.shape[1]}x{image.shape[0]}, its batch is {width}x{height}")
            continue
        batch[i] = image
        errors.append(None)
    return batch, errors


class _Slot:
    """One frame's place in a contiguous batch buffer, in the array protocol nvImageCodec takes."""

    def __init__(self, ptr: int, hw: tuple[int, int], memory: str):
        self._iface = {
            "shape": (hw[0], hw[1], 3),
            "typestr": "|u1",
            "data": (ptr, False),
            "strides": None,
            "version": 3,
        }
        self._memory = memory

    @property
    def __cuda_array_interface__(self) -> dict:
        if self._memory != "cuda":
            raise AttributeError("__cuda_array_interface__")
        return {**self._iface, "stream": None}  # ready: the engine's last run has finished

    @property
    def __array_interface__(self) -> dict:
        if self._memory == "cuda":
            raise AttributeError("__array_interface__")
        return self._iface


class DeviceDecoder:
    """Decodes batches of JPEGs into consecutive BGR frames of a buffer the caller owns.

    ``memory``: where the pixels land, "cuda" (GPU backends: hardware, CUDA and hybrid nvJPEG) or
    "cpu" (nvImageCodec's CPU backend: the same path for a CPU engine, used to test it without a GPU).
    """

    def __init__(self, device_id: int = 0, memory: str = "cuda"):
        from nvidia import nvimgcodec  # the gpu extra; imported only here

        self._nv = nvimgcodec
        self.memory = memory
        if memory == "cuda":
            kinds: tuple[object, ...] = (nvimgcodec.BackendKind.HW_GPU_ONLY, nvimgcodec.BackendKind.GPU_ONLY)
            kinds += (nvimgcodec.BackendKind.HYBRID_CPU_GPU,)
            self._decoder = nvimgcodec.Decoder(
                device_id=device_id,
                backends=[nvimgcodec.Backend(k) for k in kinds],
                options=":fancy_upsampling=1",  # chroma upsampling as libjpeg-turbo (the CPU path) does
            )
            self.location = f"cuda:{device_id}"
        elif memory == "cpu":
            self._decoder = nvimgcodec.Decoder(
                device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)],
            )
            self.location = "cpu"
        else:
            raise ValueError(f"memory must be 'cuda' or 'cpu', got {memory!r}")
        self._params = nvimgcodec.DecodeParams(
            apply_exif_orientation=False,  # as the CPU path (libjpeg-turbo through simplejpeg)
            color_spec=nvimgcodec.ColorSpec.SRGB,
            sample_format=nvimgcodec.SampleFormat.I_BGR,  # what the graph's `frames` input takes
        )
        self.name = f"nvImageCodec {nvimgcodec.__version__} on {self.location}"

    def decode_into(self, jpegs: Sequence[bytes], ptr: int, hw: tuple[int, int]) -> list[str | None]:
        """Decode JPEGs of size ``hw`` into consecutive frames at ``ptr`` (N x h x w x 3 bytes of
        ``memory``); per frame None, or why it was not decoded there. Returns once the work is queued:
        the consumer synchronises (the engine does, through its IO binding)."""
        nv = self._nv
        frame_bytes = hw[0] * hw[1] * 3
        slots = nv.as_images([_Slot(ptr + i * frame_bytes, hw, self.memory) for i in range(len(jpegs))])
        streams = [nv.CodeStream(data) for data in jpegs]
        decoded = self._decoder.decode(streams, images=slots, params=self._params)
        errors: list[str | None] = []
        for i, image in enumerate(decoded):
            if image is None:
                errors.append("nvImageCodec could not decode this JPEG")
                continue
            iface = image.__cuda_array_interface__ if self.memory == "cuda" else image.__array_interface__
            strides = iface.get("strides")
            packed = strides is None or tuple(strides) == (hw[1] * 3, 3, 1)
            if iface["data"][0] != ptr + i * frame_bytes or tuple(iface["shape"]) != (*hw, 3) or not packed:
                errors.append(f"decoded to {iface['shape']} elsewhere, not into the batch buffer")
            else:
                errors.append(None)
        return errors


def _probe_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (64, 48))
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def open_decoder(device: str, device_id: int, cpu_backend: bool = False) -> tuple[DeviceDecoder | None, str]:
    """(a decoder proven on a small JPEG, its name) where nvImageCodec and a GPU are there, else
    (None, why the CPU decodes). ``cpu_backend``: for a CPU engine, nvImageCodec's CPU backend decoding
    into the bound input buffer (asked for explicitly: it is how the device path runs without a GPU)."""
    if device == "cuda":
        memory, where = "cuda", f"cuda:{device_id}"
    elif device == "cpu" and cpu_backend:
        memory, where = "cpu", "cpu"
    else:
        return None, "the model runs on the CPU"
    try:
        decoder = DeviceDecoder(device_id, memory)
    except ImportError:
        return None, "nvImageCodec is not installed (pip install 'segserve[gpu]')"
    except Exception as exc:  # the library's own errors: no GPU decoder, driver mismatch, ...
        return None, f"nvImageCodec could not start on {where}: {exc}"
    try:
        import onnxruntime as ort

        probe = _probe_jpeg()
        buffer = ort.OrtValue.ortvalue_from_shape_and_type([1, 48, 64, 3], np.uint8, memory, device_id)
        errors = decoder.decode_into([probe], buffer.data_ptr(), (48, 64))
        reference = decode_encoded(probe)
        if errors[0] is None:
            diff = np.abs(buffer.numpy()[0].astype(np.int16) - reference).mean()
            if diff > 4:  # decoded, but not the picture: refuse rather than serve wrong masks
                errors[0] = f"probe JPEG decoded {diff:.1f} grey levels off the CPU's"
    except Exception as exc:
        return None, f"nvImageCodec failed its probe decode on {where}: {exc}"
    if errors[0] is not None:
        return None, f"nvImageCodec failed its probe decode on {where}: {errors[0]}"
    return decoder, decoder.name
