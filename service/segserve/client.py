"""SegmenterClient: the public Python API for vehicle software, the demo, benchmarks and tests.

    with SegmenterClient("localhost:50051") as client:
        result = client.segment(cv2.imread("frame.jpg"))     # result.mask: (H, W) uint8 class ids
        for r in client.stream(frames, overlay="jpeg"):       # in order, one result per frame
            ...

    # several replicas: calls spread per call, a draining replica's refusals are retried elsewhere,
    # a stream whose replica goes away moves to another without losing a frame
    with SegmenterClient(["10.0.0.11:50051", "10.0.0.12:50051"]) as client:   # or "dns:///seg:50051"
        for r in client.stream(camera_frames, camera_id="front-left"):
            ...

Unary failures raise ``grpc.RpcError`` with the server's status; on a stream a failed frame yields
a result whose ``error`` is set and the stream goes on.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import cv2
import grpc
import numpy as np

from segserve import codec
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.failover import Feed, Sent, resilient_stream
from segserve.labels import ClassInfo, LabelMap
from segserve.replicas import Retry, channel_target, names_several, service_config, target_hosts
from segserve.types import Timing

Image = np.ndarray | bytes
_OVERLAYS = {
    None: pb.OVERLAY_ENCODING_NONE,
    False: pb.OVERLAY_ENCODING_NONE,
    "jpeg": pb.OVERLAY_ENCODING_JPEG,
    "png": pb.OVERLAY_ENCODING_PNG,
}
_POLICIES = {"queue": pb.STREAM_POLICY_QUEUE, "latest": pb.STREAM_POLICY_LATEST}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CAMERA_HEADER = "x-camera-id"  # nginx's `hash $http_x_camera_id consistent` keeps a camera on one replica
_MAX_CAMERA_ID = 128


@dataclass(frozen=True)
class FrameError:
    code: grpc.StatusCode
    message: str


@dataclass
class SegmentResult:
    frame_id: str
    mask: np.ndarray | None  # (H, W) uint8 class ids at the frame's own size
    overlay: np.ndarray | None  # BGR, the frame's size
    timing: Timing
    coverage: dict[str, float] = field(default_factory=dict)
    model: str = ""
    error: FrameError | None = None
    dropped: bool = False  # skipped by a latest-policy stream
    capture_time_us: int = 0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_size: tuple[int, int]  # (width, height)
    labels: LabelMap
    providers: list[str]
    max_batch: int
    dynamic_batch: bool
    sha256: str
    # The model's form as the server read it ("", 0 or () where a server too old to say leaves them).
    wrapped: bool = False
    channel_order: str = ""  # rgb|bgr
    input_range: str = ""  # 0..1|0..255; "" also for a uint8 input the model normalises itself
    input_layout: str = ""
    input_type: str = ""
    static_batch: int | None = None  # None: dynamic
    output_name: str = ""
    output_kind: str = ""
    label_source: str = ""
    mean: tuple[float, ...] = ()  # per channel, in channel_order and input_range units
    std: tuple[float, ...] = ()
    decode_device: str = ""  # where JPEGs are decoded: "cpu" or "cuda:N"
    decode_note: str = ""  # why, in words


def _host_is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(target: str | Sequence[str]) -> bool:
    """Whether every replica ``target`` names is on this machine."""
    hosts = target_hosts(target)
    return bool(hosts) and all(_host_is_loopback(h) for h in hosts)


def _camera_metadata(camera_id: str) -> tuple[str, str]:
    if (
        not camera_id
        or len(camera_id) > _MAX_CAMERA_ID
        or not camera_id.isascii()
        or not camera_id.isprintable()
    ):
        raise ValueError(
            f"camera_id must be 1..{_MAX_CAMERA_ID} printable ASCII characters, got {camera_id!r}"
        )
    return (CAMERA_HEADER, camera_id)


def _status_code(value: int) -> grpc.StatusCode:
    return next((s for s in grpc.StatusCode if s.value[0] == value), grpc.StatusCode.UNKNOWN)


def open_channel(
    target: str,
    root_certificates: Path | bytes | None = None,
    client_cert: tuple[Path, Path] | None = None,
    options: list[tuple[str, object]] | None = None,
) -> grpc.Channel:
    """A TLS channel when a CA or a client certificate (cert, key) is given, a plain one otherwise."""
    if root_certificates is None and client_cert is None:
        return grpc.insecure_channel(target, options=options)

    def read(p: Path | bytes | None) -> bytes | None:
        return p if isinstance(p, bytes) or p is None else Path(p).read_bytes()

    key, chain = (read(client_cert[1]), read(client_cert[0])) if client_cert else (None, None)
    creds = grpc.ssl_channel_credentials(read(root_certificates), key, chain)
    return grpc.secure_channel(target, creds, options=options)


class SegmenterClient:
    """A channel to one server or several replicas. Thread-safe: ``segment`` may be called from many
    threads."""

    def __init__(
        self,
        target: str | Sequence[str] = "localhost:50051",
        *,
        token: str | None = None,
        root_certificates: Path | bytes | None = None,
        client_cert: tuple[Path, Path] | None = None,
        send: str = "auto",
        jpeg_quality: int = 90,
        timeout: float | None = 30.0,
        retry: Retry | None = None,
        health_check: bool | None = None,
    ):
        """``target``: ``host:port``, a list of them (or one string with commas), or any gRPC target
        (``dns:///segserve-headless:50051``, ``ipv4:10.0.0.1:50051,10.0.0.2:50051``); calls are
        balanced per call over every address (round_robin).

        ``send``: how numpy frames travel: ``raw`` pixels, ``jpeg``, or ``auto`` (raw on loopback).
        ``retry``: bounds of the retries and stream re-opens when a replica drains or goes away.
        ``health_check``: leave out of the pick any replica whose gRPC health says NOT_SERVING;
        default: on when the client balances itself (several replicas, ``dns:``/``ipv4:``/``ipv6:``),
        off for one ``host:port``, which may be a proxy answering for one replica only.

        Raises ValueError for a malformed target or option."""
        self.target = channel_target(target)
        self.loopback = is_loopback(target)
        self.retry = retry or Retry()
        self.stream_moves = 0  # streams re-opened after their replica went away, all streams together
        self._moves_lock = threading.Lock()
        self.send = ("raw" if self.loopback else "jpeg") if send == "auto" else send
        if self.send not in ("raw", "jpeg"):
            raise ValueError(f"send must be auto, raw or jpeg, got {send!r}")
        self.jpeg_quality = jpeg_quality
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        check = names_several(target) if health_check is None else health_check
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.service_config", service_config(self.retry, check)),
            ("grpc.enable_retries", 1),
            # gRPC retries only what it still holds: without this a raw frame over 256 KiB is never retried
            ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES + (1 << 20)),
            # a replica back from a restart gets calls again within seconds, not gRPC's 2 minutes
            ("grpc.max_reconnect_backoff_ms", 5_000),
            ("grpc.keepalive_time_ms", 20_000),  # find a replica that vanished without closing
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        self.channel = open_channel(self.target, root_certificates, client_cert, options)
        self.stub = pb_grpc.SegmenterStub(self.channel)
        self._info: ModelInfo | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SegmenterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects; raises grpc.FutureTimeoutError."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # --- requests --------------------------------------------------------------------------------
    def request(
        self,
        image: Image,
        frame_id: str = "",
        *,
        overlay: str | None = None,
        overlay_alpha: float = 0.5,
        coverage: bool = False,
        mask: bool = True,
        policy: str | None = None,
        capture_time_us: int = 0,
    ) -> pb.SegmentRequest:
        """The protobuf request for one frame (masks come at model size, raw on loopback, and are
        upsampled here: the cheapest path for both sides)."""
        msg = pb.SegmentRequest(frame_id=frame_id, capture_time_us=capture_time_us)
        if isinstance(image, (bytes, bytearray, memoryview)):
            msg.encoded = bytes(image)
        elif self.send == "raw":
            frame = np.ascontiguousarray(image)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"expected a BGR uint8 (H, W, 3) image, got {frame.dtype} {frame.shape}")
            height, width = frame.shape[:2]
            raw = msg.raw  # set in place: CopyFrom of a made-apart message copies the pixels twice
            raw.width, raw.height, raw.format = width, height, pb.PIXEL_FORMAT_BGR8
            raw.data = frame.tobytes()
        else:
            msg.encoded = codec.encode_jpeg(image, self.jpeg_quality)
        opts = msg.outputs
        if mask:
            opts.mask = pb.MASK_ENCODING_RAW if self.loopback else pb.MASK_ENCODING_PNG
            opts.mask_resolution = pb.MASK_RESOLUTION_MODEL
        else:
            opts.mask = pb.MASK_ENCODING_NONE
        opts.overlay = _OVERLAYS[overlay]
        opts.overlay_alpha = overlay_alpha
        opts.coverage = coverage
        if policy is not None:
            msg.stream_policy = _POLICIES[policy]
        return msg

    def segment(
        self, image: Image, frame_id: str = "", *, timeout: float | None = None, **options
    ) -> SegmentResult:
        """Segment one frame. Raises grpc.RpcError with the server's status on failure."""
        msg = self.request(image, frame_id, **options)
        response = self.stub.Segment(msg, timeout=timeout or self.timeout, metadata=self._metadata)
        return self.result(response, frame_size=self._frame_size(image, msg))

    def stream(
        self,
        frames: Iterable[Image],
        *,
        policy: str = "queue",
        timeout: float | None = None,
        camera_id: str | None = None,
        **options,
    ) -> Iterator[SegmentResult]:
        """Segment frames over a StreamSegment call; yields results in order, frame ids "0", "1", ...

        ``camera_id`` travels as ``x-camera-id`` metadata (a proxy keeps the camera on one replica).
        When the replica drains or goes away the stream moves to another without an error: with
        ``queue`` every unanswered frame is sent again, in order; with ``latest`` the unanswered
        frames but the newest come back ``dropped``. ``timeout`` bounds the whole stream. Raises
        grpc.RpcError (UNAVAILABLE once ``retry.stream_reopens`` re-opens failed in a row)."""
        if policy not in _POLICIES:
            raise ValueError(f"policy must be queue or latest, got {policy!r}")
        metadata = tuple(self._metadata or ()) + (
            (_camera_metadata(camera_id),) if camera_id is not None else ()
        )

        def sent() -> Iterator[Sent]:
            for index, image in enumerate(frames):
                # every message names the policy: after a move any of them may open the new call
                msg = self.request(
                    image, str(index), policy=policy, capture_time_us=time.time_ns() // 1000, **options
                )
                yield Sent(msg, self._frame_size(image, msg))

        yield from resilient_stream(
            lambda requests, remaining: self.stub.StreamSegment(
                requests, timeout=remaining, metadata=metadata or None
            ),
            Feed(sent()),
            policy=policy,
            retry=self.retry,
            timeout=timeout,
            on_response=lambda response, item: self.result(response, item.frame_size),
            on_dropped=self._dropped,
            on_move=self._count_move,
        )

    def _count_move(self) -> None:
        with self._moves_lock:
            self.stream_moves += 1

    @staticmethod
    def _dropped(item: Sent) -> SegmentResult:
        """A latest-policy frame skipped while the stream moved to another replica."""
        msg = item.msg
        return SegmentResult(
            msg.frame_id, None, None, Timing(), dropped=True, capture_time_us=msg.capture_time_us
        )

    def model_info(self) -> ModelInfo:
        info = self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self._metadata)
        classes = tuple(ClassInfo(c.id, c.name, tuple(c.color_rgb)) for c in info.classes)
        self._info = ModelInfo(
            name=info.name,
            version=info.version,
            input_size=(info.input_width, info.input_height),
            labels=LabelMap(classes),
            providers=list(info.providers),
            max_batch=info.max_batch,
            dynamic_batch=info.dynamic_batch,
            sha256=info.sha256,
            wrapped=info.wrapped,
            channel_order=info.channel_order,
            input_range=info.input_range,
            input_layout=info.input_layout,
            input_type=info.input_type,
            static_batch=info.static_batch or None,
            output_name=info.output_name,
            output_kind=info.output_kind,
            label_source=info.label_source,
            mean=tuple(info.mean),
            std=tuple(info.std),
            decode_device=info.decode_device,
            decode_note=info.decode_note,
        )
        return self._info

    # --- responses -------------------------------------------------------------------------------
    @staticmethod
    def _frame_size(image: Image, msg: pb.SegmentRequest) -> tuple[int, int] | None:
        if isinstance(image, np.ndarray):
            return image.shape[1], image.shape[0]
        try:
            data = msg.encoded
            return codec.png_size(data) if data.startswith(codec.PNG_MAGIC) else codec.jpeg_size(data)
        except Exception:
            return None  # the server will say what is wrong with it

    @staticmethod
    def result(response: pb.SegmentResponse, frame_size: tuple[int, int] | None = None) -> SegmentResult:
        t = response.timing
        timing = Timing(**{f.name: getattr(t, f.name) for f in fields(Timing)})
        error = (
            FrameError(_status_code(response.error.code), response.error.message)
            if response.HasField("error")
            else None
        )
        mask: np.ndarray | None = None
        if response.HasField("mask") and response.mask.data:
            m = response.mask
            if m.encoding == pb.MASK_ENCODING_RAW:
                mask = np.frombuffer(m.data, np.uint8).reshape(m.height, m.width)
            else:
                mask = codec.decode_mask_png(m.data)
            if frame_size is not None and (m.width, m.height) != frame_size:
                mask = cv2.resize(mask, frame_size, interpolation=cv2.INTER_NEAREST)
        overlay = None
        if response.HasField("overlay") and response.overlay.data:
            overlay = cv2.imdecode(np.frombuffer(response.overlay.data, np.uint8), cv2.IMREAD_COLOR)
        return SegmentResult(
            frame_id=response.frame_id,
            mask=mask,
            overlay=overlay,
            timing=timing,
            coverage={c.name: c.fraction for c in response.coverage},
            model=response.model,
            error=error,
            dropped=response.dropped,
            capture_time_us=response.capture_time_us,
        )
