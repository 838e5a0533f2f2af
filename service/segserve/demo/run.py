"""The demo loop: frames -> StreamSegment -> live window, web view and/or headless video + report.

A sender (the request iterator, run by grpc) reads and paces frames and keeps at most ``inflight``
frames between send and receive; the main thread takes the answers in order, draws and writes.
Ctrl-C stops sending, cancels the call and still writes the report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import grpc
import numpy as np

from segserve.client import ModelInfo, SegmenterClient
from segserve.demo.errors import DemoError
from segserve.demo.hud import draw_hud
from segserve.demo.load import LoadMonitor
from segserve.demo.pacing import Pacer
from segserve.demo.records import FrameRecord, RollingStats, summarize, summary_line
from segserve.demo.report import write_report
from segserve.demo.sources import Frame, FrameSource, open_source
from segserve.demo.video import VideoWriter
from segserve.demo.window import LiveWindow, display_available

if TYPE_CHECKING:
    from collections.abc import Callable

    from segserve.demo.web.server import WebView


@dataclass
class DemoOptions:
    server: str = "localhost:50051"
    source: str = "0"
    out: Path = Path("demo-output")
    headless: bool | None = None  # None: headless when there is no display
    realtime: bool = True  # pace file sources at their native rate
    fps: float | None = None  # override the source's rate (image folders: 15 by default)
    frames: int | None = None  # stop after this many frames
    policy: str | None = None  # queue | latest; None: latest for a webcam, queue for files
    inflight: int = 4
    alpha: float = 0.5
    token: str | None = None
    connect_timeout: float = 5.0
    hud: bool = True
    quiet: bool = False
    web_port: int | None = None  # serve the live view on this port (0: a free one); no window then
    web_host: str = "127.0.0.1"
    web_wait: bool = False  # start streaming when the first browser has connected
    server_pid: int | None = None  # a local server's process, whose CPU use the report records


def _now_us() -> int:
    return time.time_ns() // 1000


def connect(options: DemoOptions) -> tuple[SegmenterClient, ModelInfo]:
    """A ready client and the server's model info; DemoError when the server cannot be reached."""
    client = SegmenterClient(options.server, token=options.token)
    try:
        client.wait_ready(options.connect_timeout)
        info = client.model_info()
    except grpc.FutureTimeoutError:
        client.close()
        raise DemoError(
            f"server {options.server} is not reachable after {options.connect_timeout:.0f} s "
            "(start one with `segserve serve`, or give --server HOST:PORT)"
        ) from None
    except grpc.RpcError as exc:
        client.close()
        raise DemoError(f"server {options.server}: {exc.code().name}: {exc.details()}") from None
    return client, info


class Sender:
    """The request iterator: reads, paces, bounds the frames in flight, remembers what it sent."""

    def __init__(
        self, client: SegmenterClient, source: FrameSource, options: DemoOptions, pacer: Pacer, policy: str
    ):
        self.client, self.source, self.options, self.pacer, self.policy = (
            client,
            source,
            options,
            pacer,
            policy,
        )
        self.stop = pacer.stop
        self.slots = threading.Semaphore(options.inflight)
        self.pending: dict[str, tuple[Frame, int]] = {}
        self.error: BaseException | None = None
        self.sent = 0

    def __iter__(self) -> Iterator:
        try:
            for frame in self.source.frames():
                while not self.slots.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                if self.stop.is_set() or not self.pacer.wait():
                    return
                if not self.source.live:
                    frame.capture_us = _now_us()  # a file frame "arrives" when it is due
                frame_id = str(frame.index)
                msg = self.client.request(
                    frame.image,
                    frame_id,
                    overlay="jpeg",
                    overlay_alpha=self.options.alpha,
                    mask=False,
                    policy=self.policy if self.sent == 0 else None,
                    capture_time_us=frame.capture_us,
                )
                self.pending[frame_id] = (frame, _now_us())
                self.sent += 1
                yield msg
        except GeneratorExit:  # grpc closed the iterator: the call was cancelled (Ctrl-C, end)
            raise
        except BaseException as exc:  # reported by the main thread; grpc would only log it
            self.error = exc


@contextlib.contextmanager
def _ctrl_c_handler(handler: Callable[[int, object], None]) -> Iterator[None]:
    """SIGINT calls ``handler`` while the block runs: only in the main thread (the only one that can
    set handlers), and not where SIGINT is ignored (a background job: Ctrl-C is not for it)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _placeholder(frame: np.ndarray, text: str) -> np.ndarray:
    grey = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) // 2
    cv2.putText(
        grey, text, (20, grey.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 255), 2, cv2.LINE_AA
    )
    return grey


def run(options: DemoOptions) -> int:
    """Run the demo; returns the exit code. Raises DemoError for what the user can fix."""
    source = open_source(options.source, options.fps, options.frames)
    try:
        return _run(options, source)
    finally:
        source.close()


def _start_web(options: DemoOptions, source: FrameSource, info: ModelInfo) -> WebView:
    from segserve.demo.web.server import WebView

    hello = {
        "source": Path(source.name).name or source.name,  # the file's name, not where it lives
        "model": f"{info.name}@{info.version}",
        "providers": ", ".join(info.providers),
        "input_size": list(info.input_size),
        "classes": [{"name": c.name, "color": list(c.color)} for c in info.labels.classes],
    }
    assert options.web_port is not None
    web = WebView(options.web_host, options.web_port, hello)
    web.start()
    return web


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def _run(options: DemoOptions, source: FrameSource) -> int:
    log = (lambda *a: None) if options.quiet else (lambda *a: print(*a, flush=True))
    web_view = options.web_port is not None
    headless = options.headless
    if headless is None:
        headless = False if web_view else not display_available()
        if headless:
            log("no display: running headless, writing the video and report")
    client, info = connect(options)
    web = window = None
    try:
        if web_view:
            web = _start_web(options, source, info)
        elif not headless:
            window = LiveWindow(f"segserve demo: {source.name}")
        return _stream(options, source, client, info, headless, web, window, log)
    finally:
        client.close()
        if window is not None:
            window.close()
        if web is not None:
            web.close()


def _stream(
    options: DemoOptions,
    source: FrameSource,
    client: SegmenterClient,
    info: ModelInfo,
    headless: bool,
    web: WebView | None,
    window: LiveWindow | None,
    log: Callable[..., None],
) -> int:
    policy = options.policy or ("latest" if source.live else "queue")
    fps = source.fps or 15.0
    pacer = Pacer(source.fps if (options.realtime and not source.live) else None)
    sender = Sender(client, source, options, pacer, policy)
    stats = RollingStats()
    records: list[FrameRecord] = []
    if web is not None:
        log(f"live view on {web.url}" + (" (waiting for a browser to connect)" if options.web_wait else ""))
        if options.web_wait:
            web.wait_viewer()
    writer = None
    if headless:
        try:
            options.out.mkdir(parents=True, exist_ok=True)
            writer = VideoWriter(options.out / "demo.mp4", fps, source.size)
        except OSError as exc:
            raise DemoError(f"cannot write the video into {options.out}: {exc}") from None
    metadata = (("authorization", f"Bearer {options.token}"),) if options.token else None
    log(
        f"streaming {source.name} ({source.size[0]}x{source.size[1]}, {fps:.0f} fps, "
        f"{'real time' if pacer.period else 'max rate'}, policy {policy}) to {options.server} "
        f"[{info.name}@{info.version}, {info.input_size[0]}x{info.input_size[1]}, "
        f"{'/'.join(info.providers[:1])}]"
    )
    watched = {"client": os.getpid()}
    if options.server_pid is not None:
        watched["server"] = options.server_pid
    monitor = LoadMonitor(watched).start()
    call = client.stub.StreamSegment(iter(sender), metadata=metadata)
    interrupted = failed = False
    title = (
        f"{info.name} {info.input_size[0]}x{info.input_size[1]} {info.providers[0] if info.providers else ''}"
    )

    def on_ctrl_c(signum: int, stack: object) -> None:
        # Ctrl-C ends the stream instead of raising KeyboardInterrupt wherever the main thread
        # happens to be (inside the video encoder, it left the writer unable to close: a hang)
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: stop waiting for the stream to end
            raise KeyboardInterrupt
        interrupted = True
        sender.stop.set()
        call.cancel()

    with _ctrl_c_handler(on_ctrl_c):
        try:
            for response in call:
                receive_us = _now_us()
                frame, send_us = sender.pending.pop(response.frame_id, (None, 0))
                sender.slots.release()
                if frame is None:
                    continue
                result = client.result(response, frame.image.shape[1::-1])
                jpeg = None
                if result.dropped:
                    status, right = "dropped", _placeholder(frame.image, "dropped (latest policy)")
                elif result.error is not None:
                    status = f"error: {result.error.code.name} {result.error.message}"
                    right = _placeholder(frame.image, result.error.code.name)
                else:
                    assert result.overlay is not None  # every request asks for a JPEG overlay
                    status, right, jpeg = "ok", result.overlay, response.overlay.data
                record = FrameRecord.from_timing(
                    frame.index, frame.capture_us, send_us, receive_us, status, result.timing
                )
                stats.add(record)
                if web is not None:  # the server's own JPEG when there is one: no second encode
                    web.publish(jpeg or _jpeg(right), stats.figures())
                if options.hud and (writer is not None or window is not None):
                    right = draw_hud(right, stats, info.labels, title)
                if writer is not None:
                    writer.write(frame.image, right)
                records.append(record)  # last: an exception above leaves the frame out of every output
                if len(records) == 1:  # the warm-up cost a user sees first (and what scripts may wait for)
                    first_ms = (receive_us - frame.capture_us) / 1000
                    log(f"first frame answered: {first_ms:.0f} ms after capture")
                if window is not None and not window.show(right):
                    log("window closed")
                    break
        except KeyboardInterrupt:  # a Ctrl-C before the handler was set, or where it cannot be
            interrupted = True
        except grpc.RpcError as exc:
            if not interrupted:  # cancelled by Ctrl-C: not a failure
                failed = True
                print(
                    f"error: stream to {options.server} ended: {exc.code().name}: {exc.details()}",
                    file=sys.stderr,
                )
        finally:
            sender.stop.set()
            call.cancel()
            load = monitor.stop()
            if writer is not None:
                writer.close()
    if interrupted:
        log("interrupted: writing the report of the frames answered so far")
    if sender.error is not None and not isinstance(sender.error, KeyboardInterrupt):
        failed = True
        print(f"error: reading {source.name}: {sender.error or type(sender.error).__name__}", file=sys.stderr)
    meta = {
        "source": source.name,
        "server": options.server,
        "model": f"{info.name}@{info.version}",
        "input_size": list(info.input_size),
        "providers": info.providers,
        "policy": policy,
        "realtime": bool(pacer.period),
        "source_fps": source.fps,
        "interrupted": interrupted,
        "machine": load.as_dict(),
    }
    if writer is not None:
        meta["video"] = {"path": str(writer.path), "codec": writer.codec, "frames": writer.frames}
        paths, summary = write_report(options.out, records, meta, writer.path)
        plot = f"{paths.plot}, " if paths.plot else "(no plot: pip install matplotlib), "
        video = f"{paths.video} ({writer.codec}, {writer.frames} frames)"
        print(f"wrote {video}, {paths.csv}, {plot}{paths.summary}")
    else:
        summary = summarize(records)
    line = summary_line(summary)
    print(line)
    print(load.line())
    if web is not None:
        web.close(line)
    return 1 if failed else 0
