"""Frame -> result: decode -> resize -> batch -> engine -> mask resize -> colorize/overlay -> encode.

Plain dataclasses in and out, no protobuf or grpc: the edges translate, benchmarks await
``Pipeline.process`` in-process, and every stage is timed into a ``Timing``.

With device decode (the engine has a ``decoder``), a JPEG whose caller wants no overlay is not decoded
here: its header is checked and the bytes go to the batcher as an ``EncodedFrame``, decoded with their
batch on the device (``device_decode``). An overlay needs the frame's pixels on the host: CPU path.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from segserve import codec, priority
from segserve.admission import Ticket
from segserve.batcher import Batcher, BatchResult
from segserve.device_decode import JPEG_MAGIC, EncodedFrame
from segserve.errors import DeadlineExceeded, InvalidFrame
from segserve.graph import ModelMetadata
from segserve.labels import mask_to_training_rgb
from segserve.types import (
    Coverage,
    EncodedImage,
    FrameRequest,
    FrameResult,
    MaskFormat,
    MaskResolution,
    OutputOptions,
    OverlayFormat,
    Timing,
)

T = TypeVar("T")


class DecodingEngine(Protocol):
    """What the pipeline reads of the engine to send JPEGs to the device (``engine.Engine``)."""

    @property
    def decoder(self) -> object | None: ...


def _us(start: float, end: float) -> int:
    return int((end - start) * 1e6)


def _check_deadline(request: FrameRequest, when: str) -> None:
    if request.deadline is not None and time.monotonic() >= request.deadline:
        raise DeadlineExceeded(f"the deadline passed {when}")


class Pipeline:
    """Frame -> result as a coroutine: the CPU stages run on a bounded pool (OpenCV, libjpeg-turbo and
    zlib release the GIL), the network on the batcher's executor. Create inside the serving loop."""

    def __init__(
        self,
        metadata: ModelMetadata,
        batcher: Batcher,
        limits: codec.Limits | None = None,
        resize_in_graph: bool = False,
        cpu_workers: int | None = None,
        device_decode: DecodingEngine | None = None,
    ):
        """``device_decode``: the engine, when JPEGs may be decoded on the device; they are while its
        ``decoder`` is set (it drops it if the library fails) and the batcher ``takes_encoded``."""
        self.metadata = metadata
        self.resize_in_graph = resize_in_graph
        self.batcher = batcher
        self.limits = limits or codec.Limits()
        self._device_decode = device_decode
        self.model_id = f"{metadata.name}@{metadata.version}"
        self._model_wh = (metadata.input_width, metadata.input_height)
        self._names = metadata.labels.names
        workers = cpu_workers or max(2, os.cpu_count() or 2)
        self.cpu = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="segserve-cpu", initializer=priority.lower_current_thread
        )

    @property
    def decodes_on_device(self) -> bool:
        """Whether JPEGs wanting no overlay go to the device undecoded now."""
        return (
            self._device_decode is not None
            and self._device_decode.decoder is not None
            and self.batcher.takes_encoded
        )

    def decode(self, request: FrameRequest) -> tuple[np.ndarray | EncodedFrame, tuple[int, int]]:
        """The frame's pixels (or, with device decode, its checked JPEG) and its own (width, height).

        Without an overlay only the model's input size of pixels is needed, so a JPEG is decoded
        at the smallest DCT scale that still covers it; the masks keep the frame's own size.
        """
        if request.raw is not None:
            frame = codec.decode_raw(request.raw, self.limits)
            return frame, (request.raw.width, request.raw.height)
        if request.encoded is None:
            raise InvalidFrame("request has no frame: set `encoded` (JPEG/PNG bytes) or `raw`")
        at_least = self._decode_at_least(request)
        if at_least is not None and request.encoded.startswith(JPEG_MAGIC) and self.decodes_on_device:
            encoded = EncodedFrame.from_jpeg(request.encoded, self.limits)
            return encoded, (encoded.shape[1], encoded.shape[0])
        frame = codec.decode_encoded(request.encoded, self.limits, at_least)
        return frame, codec.encoded_size(request.encoded)

    def cost(self, request: FrameRequest) -> int:
        """Bytes admission charges a request: what it holds while in flight. Its own bytes, the
        pixels decoding it will make (read from the image's header by the decoding library: a 36 KB
        JPEG of 1080p decodes to 6 MB) and the answers built from it (the mask at its resolution,
        the overlay at the frame's size), so the byte budget bounds what admitted frames really
        hold. A header that cannot be read, or a frame over the pixel limit, is charged its own
        bytes: decoding refuses it at once."""
        try:
            if request.raw is not None:
                width, height, decoded = request.raw.width, request.raw.height, 0
            elif request.encoded is not None:
                width, height = codec.encoded_size(request.encoded)
                at_least = self._decode_at_least(request)
                decoded = 3 * codec.decoded_pixels(request.encoded, (width, height), at_least)
            else:
                return request.nbytes
            codec.check_size(width, height, self.limits, "frame")
        except Exception:  # anything a header reader may raise: decoding answers it with its status
            return request.nbytes
        return request.nbytes + decoded + self._answer_bytes(request.options, width * height)

    def _answer_bytes(self, options: OutputOptions, frame_pixels: int) -> int:
        model_w, model_h = self._model_wh
        mask = 0
        if options.mask is not MaskFormat.NONE:
            pixels = frame_pixels if options.mask_resolution is MaskResolution.FRAME else model_w * model_h
            mask = pixels * (3 if options.mask is MaskFormat.PNG_RGB else 1)
        overlay = 0 if options.overlay is OverlayFormat.NONE else 3 * frame_pixels
        return mask + overlay

    def _decode_at_least(self, request: FrameRequest) -> tuple[int, int] | None:
        """Without an overlay only the model's input size of pixels is needed."""
        return None if request.options.overlay is not OverlayFormat.NONE else self._model_wh

    def preprocess(self, frame: np.ndarray | EncodedFrame) -> np.ndarray | EncodedFrame:
        """BGR frame -> RGB at the model's input size (normalisation happens in the graph).

        With resize_in_graph the graph does the conversion and resize too (device decode implies it):
        nothing to do here.
        """
        if self.resize_in_graph or isinstance(frame, EncodedFrame):
            return frame
        resized = (
            frame
            if frame.shape[1::-1] == self._model_wh
            else cv2.resize(frame, self._model_wh, interpolation=cv2.INTER_LINEAR)
        )
        return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)

    def _decode_and_preprocess(
        self, request: FrameRequest
    ) -> tuple[np.ndarray | EncodedFrame, tuple[int, int], np.ndarray | EncodedFrame, float, float]:
        t0 = time.perf_counter()
        frame, size = self.decode(request)
        t1 = time.perf_counter()
        return frame, size, self.preprocess(frame), t0, t1

    async def offload(self, ticket: Ticket | None, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` on the CPU pool. If the caller leaves while it runs, the caller's admission
        ticket stays held until the job really ends, so abandoned work still counts as load."""
        job = self.cpu.submit(fn, *args)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if ticket is not None and not job.cancel():
                ticket.release_after(job)
            raise

    async def process(self, request: FrameRequest, ticket: Ticket | None = None) -> FrameResult:
        """Run one frame end to end. Raises a SegserveError subclass for anything the caller did wrong,
        DeadlineExceeded when ``request.deadline`` passes before the network runs."""
        t0 = time.perf_counter()
        _check_deadline(request, "before decoding")
        self.batcher.announce()
        try:
            frame, size, model_input, _, t1 = await self.offload(ticket, self._decode_and_preprocess, request)
            _check_deadline(request, "before inference")
        except BaseException:
            self.batcher.withdraw()
            raise
        t2 = time.perf_counter()
        batch: BatchResult = await self.batcher.infer(
            model_input, lane=request.lane, deadline=request.deadline, announced=True
        )
        result = await self.postprocess_and_encode(frame, size, batch.labels, request, ticket)
        t3 = time.perf_counter()
        result.timing.decode_us = _us(t0, t1) + batch.decode_us  # device decode: with its batch
        result.timing.preprocess_us = _us(t1, t2) + batch.stack_us
        result.timing.queue_us = batch.queue_us
        result.timing.inference_us = batch.inference_us
        result.timing.batch_size = batch.batch_size
        result.timing.total_us = _us(t0, t3)
        return result

    async def postprocess_and_encode(
        self,
        frame: np.ndarray | EncodedFrame,
        size: tuple[int, int],
        labels: np.ndarray,
        request: FrameRequest,
        ticket: Ticket | None = None,
    ) -> FrameResult:
        """``frame``: the decoded pixels (full size when an overlay is wanted); ``size``: the frame's own.

        The mask and the overlay are independent, and OpenCV releases the GIL: when both are wanted they
        run side by side on the pool. ``postprocess_us`` is the longer of the two post-processing parts,
        ``encode_us`` the rest of the wall time.
        """
        opts = request.options
        t0 = time.perf_counter()
        wants_overlay = opts.overlay is not OverlayFormat.NONE
        wants_mask = opts.mask is not MaskFormat.NONE or opts.coverage
        mask_out: EncodedImage | None = None
        coverage: list[Coverage] = []
        mask_post_s = 0.0
        overlay_out: EncodedImage | None = None
        overlay_post_s = 0.0
        jobs: list[Awaitable[Any]] = []
        if wants_mask:
            jobs.append(self.offload(ticket, self.mask_outputs, size, labels, opts))
        if wants_overlay:
            if isinstance(frame, EncodedFrame):  # `decode` keeps host pixels for any overlay
                raise ValueError("an overlay needs the frame's pixels, not a JPEG left for the device")
            jobs.append(self.offload(ticket, self.overlay, frame, size, labels, opts))
        done = await asyncio.gather(*jobs)
        if wants_mask:
            mask_out, coverage, mask_post_s = done[0]
        if wants_overlay:
            overlay_out, overlay_post_s = done[-1]
        wall = time.perf_counter() - t0
        post = min(max(mask_post_s, overlay_post_s), wall)
        timing = Timing(postprocess_us=int(post * 1e6), encode_us=int((wall - post) * 1e6))
        return FrameResult(
            frame_id=request.frame_id,
            model=self.model_id,
            timing=timing,
            mask=mask_out,
            overlay=overlay_out,
            coverage=coverage,
            capture_time_us=request.capture_time_us,
            labels=labels,
        )

    def mask_outputs(
        self, size: tuple[int, int], labels: np.ndarray, opts: OutputOptions
    ) -> tuple[EncodedImage | None, list[Coverage], float]:
        """(encoded mask, coverage, seconds spent before encoding)."""
        t0 = time.perf_counter()
        mask = labels
        at_frame = opts.mask_resolution is MaskResolution.FRAME and size != self._model_wh
        if opts.mask is not MaskFormat.NONE and at_frame:
            mask = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        coverage = self.coverage(mask) if opts.coverage else []
        post = time.perf_counter() - t0
        return self.encode_mask(mask, opts.mask), coverage, post

    def overlay(
        self, frame: np.ndarray, size: tuple[int, int], labels: np.ndarray, opts: OutputOptions
    ) -> tuple[EncodedImage, float]:
        """(encoded overlay at the frame's size, seconds spent before encoding)."""
        t0 = time.perf_counter()
        colours = self.metadata.labels.colorize(labels)
        if size != self._model_wh:
            colours = cv2.resize(colours, size, interpolation=cv2.INTER_NEAREST)
        image = cv2.addWeighted(frame, 1.0 - opts.overlay_alpha, colours, opts.overlay_alpha, 0.0)
        post = time.perf_counter() - t0
        data = (
            codec.encode_jpeg(image, opts.jpeg_quality)
            if opts.overlay is OverlayFormat.JPEG
            else codec.encode_png(image)
        )
        return EncodedImage(size[0], size[1], opts.overlay, data), post

    def close(self) -> None:
        """Stop the CPU pool without waiting for a job nobody waits for (the grace period is true)."""
        self.cpu.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def encode_mask(mask: np.ndarray, fmt: MaskFormat) -> EncodedImage | None:
        height, width = mask.shape
        if fmt is MaskFormat.NONE:
            return None
        if fmt is MaskFormat.RAW:
            data = mask.tobytes()
        elif fmt is MaskFormat.PNG:
            data = codec.encode_mask_png(mask)
        else:
            data = codec.encode_mask_png(mask_to_training_rgb(mask))
        return EncodedImage(width, height, fmt, data)

    def coverage(self, mask: np.ndarray) -> list[Coverage]:
        hist = cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel()
        total = float(mask.size)
        return [
            Coverage(int(k), self._names.get(int(k), f"class_{int(k)}"), float(hist[k]) / total)
            for k in np.flatnonzero(hist)
        ]
