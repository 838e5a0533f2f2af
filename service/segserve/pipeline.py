"""Frame -> result: decode -> resize -> batch -> engine -> mask resize -> colorize/overlay -> encode.

Plain dataclasses in and out, no protobuf or grpc: the server translates, benchmarks call
``Pipeline.process`` in-process, and every stage is timed into a ``Timing``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from segserve import codec
from segserve.batcher import Batcher, BatchResult
from segserve.errors import InvalidFrame
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


def _us(start: float, end: float) -> int:
    return int((end - start) * 1e6)


class Pipeline:
    """Thread-safe; call ``process`` from as many threads as there are frames in flight."""

    def __init__(
        self,
        metadata: ModelMetadata,
        batcher: Batcher,
        limits: codec.Limits | None = None,
        resize_in_graph: bool = False,
    ):
        self.metadata = metadata
        self.resize_in_graph = resize_in_graph
        self.batcher = batcher
        self.limits = limits or codec.Limits()
        self.model_id = f"{metadata.name}@{metadata.version}"
        self._model_wh = (metadata.input_width, metadata.input_height)
        self._names = metadata.labels.names
        self._outputs = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="segserve-out")

    def decode(self, request: FrameRequest) -> tuple[np.ndarray, tuple[int, int]]:
        """The frame's pixels and its own (width, height).

        Without an overlay only the model's input size of pixels is needed, so a JPEG is decoded
        at the smallest DCT scale that still covers it; the masks keep the frame's own size.
        """
        if request.raw is not None:
            frame = codec.decode_raw(request.raw, self.limits)
            return frame, (request.raw.width, request.raw.height)
        if request.encoded is None:
            raise InvalidFrame("request has no frame: set `encoded` (JPEG/PNG bytes) or `raw`")
        needs_pixels = request.options.overlay is not OverlayFormat.NONE
        frame = codec.decode_encoded(request.encoded, self.limits, None if needs_pixels else self._model_wh)
        return frame, codec.encoded_size(request.encoded)

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """BGR frame -> RGB at the model's input size (normalisation happens in the graph).

        With resize_in_graph the graph does the conversion and resize too: nothing to do here.
        """
        if self.resize_in_graph:
            return frame
        resized = (
            frame
            if frame.shape[1::-1] == self._model_wh
            else cv2.resize(frame, self._model_wh, interpolation=cv2.INTER_LINEAR)
        )
        return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)

    def process(self, request: FrameRequest) -> FrameResult:
        """Run one frame end to end. Raises a SegserveError subclass for anything the caller did wrong."""
        t0 = time.perf_counter()
        self.batcher.announce()
        try:
            frame, size = self.decode(request)
            t1 = time.perf_counter()
            model_input = self.preprocess(frame)
        except BaseException:
            self.batcher.withdraw()
            raise
        t2 = time.perf_counter()
        future = self.batcher.submit(
            model_input,
            lane=request.lane,
            deadline=request.deadline,
            is_cancelled=request.is_cancelled,
            announced=True,
        )
        batch: BatchResult = future.result()
        result = self.postprocess_and_encode(frame, size, batch.labels, request)
        t3 = time.perf_counter()
        result.timing.decode_us = _us(t0, t1)
        result.timing.preprocess_us = _us(t1, t2) + batch.stack_us
        result.timing.queue_us = batch.queue_us
        result.timing.inference_us = batch.inference_us
        result.timing.batch_size = batch.batch_size
        result.timing.total_us = _us(t0, t3)
        return result

    def postprocess_and_encode(
        self, frame: np.ndarray, size: tuple[int, int], labels: np.ndarray, request: FrameRequest
    ) -> FrameResult:
        """``frame``: the decoded pixels (full size when an overlay is wanted); ``size``: the frame's own.

        The mask and the overlay are independent, and OpenCV releases the GIL: when both are wanted the
        overlay is made on the output pool while this thread makes the mask. ``postprocess_us`` is the
        longer of the two post-processing parts, ``encode_us`` the rest of the wall time.
        """
        opts = request.options
        t0 = time.perf_counter()
        wants_overlay = opts.overlay is not OverlayFormat.NONE
        wants_mask = opts.mask is not MaskFormat.NONE or opts.coverage
        job = (
            self._outputs.submit(self.overlay, frame, size, labels, opts)
            if wants_overlay and wants_mask
            else None
        )
        mask_out, coverage, mask_post_s = self.mask_outputs(size, labels, opts)
        overlay_out, overlay_post_s = None, 0.0
        if job is not None:
            overlay_out, overlay_post_s = job.result()
        elif wants_overlay:
            overlay_out, overlay_post_s = self.overlay(frame, size, labels, opts)
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
        self._outputs.shutdown(wait=True)

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
