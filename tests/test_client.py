import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from frames import jpeg, street_frame
from prometheus_client.parser import text_string_to_metric_families
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.client import SegmenterClient, is_loopback
from segserve.edge.server import RunningServer
from segserve.replicas import Retry, channel_target
from servers import start_server

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
from replica_tools import SMALL, wait_draining
from replica_tools import address as _address
from replica_tools import sample as _sample
from replica_tools import served as _served


def test_loopback_detection():
    assert is_loopback("localhost:50051") and is_loopback("127.0.0.1:1") and is_loopback("[::1]:5")
    assert not is_loopback("10.0.0.5:50051") and not is_loopback("seg.example.com:443")


@pytest.mark.parametrize("send", ["raw", "jpeg"])
def test_segment_numpy_and_bytes_give_frame_sized_masks(target, send):
    frame = street_frame(1920, 1080)
    with SegmenterClient(target, send=send) as client:
        result = client.segment(frame, "x", overlay="jpeg", coverage=True)
        from_bytes = client.segment(jpeg(frame), "y")
    assert result.frame_id == "x" and result.error is None
    assert result.mask.shape == (1080, 1920) and result.mask.dtype == np.uint8
    assert result.overlay.shape == (1080, 1920, 3)
    assert set(result.coverage) <= {f"class_{i}" for i in range(6)}
    assert from_bytes.mask.shape == (1080, 1920)


def test_mask_upsampled_by_the_client_equals_the_servers_frame_mask(target):
    frame = street_frame(640, 360, seed=4)
    with SegmenterClient(target) as client:
        ours = client.segment(frame).mask
        msg = client.request(frame)
        msg.outputs.mask_resolution = 1  # FRAME: the server upsamples
        theirs = client.result(client.stub.Segment(msg)).mask
    assert np.array_equal(ours, theirs)


def test_stream_yields_in_order_and_reports_failed_frames(target):
    frames = [street_frame(320, 240, seed=i) for i in range(6)]
    frames[2] = b"not an image"
    with SegmenterClient(target) as client:
        results = list(client.stream(frames))
    assert [r.frame_id for r in results] == [str(i) for i in range(6)]
    assert results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT and results[2].mask is None
    assert all(r.error is None and r.mask.shape == (240, 320) for i, r in enumerate(results) if i != 2)


def test_unary_failure_raises_rpc_error_with_status(target):
    with SegmenterClient(target) as client, pytest.raises(grpc.RpcError) as err:
        client.segment(b"\xff\xd8\xff\xe0garbage")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cli_segment_writes_outputs(target, tmp_path):
    image = tmp_path / "frame.jpg"
    cv2.imwrite(str(image), street_frame(800, 600))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "segserve", "segment", str(image), "--out", str(out), "--server", target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    mask = cv2.imread(str(out / "frame_mask.png"), cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(str(out / "frame_labels.png"))
    assert mask.shape == (600, 800) and np.array_equal(labels[..., 0], mask)
    assert cv2.imread(str(out / "frame_overlay.png")).shape == (600, 800, 3)


def test_cli_segment_with_server_down_is_one_line(tmp_path):
    image = tmp_path / "frame.jpg"
    cv2.imwrite(str(image), street_frame(64, 48))
    run = subprocess.run(
        [sys.executable, "-m", "segserve", "segment", str(image), "--server", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and run.stderr.startswith("error: UNAVAILABLE")
    assert "Traceback" not in run.stderr


# --- several replicas ----------------------------------------------------------------------------
# Real servers on free loopback ports; a replica "drains" through RunningServer.drain_and_stop and
# "dies" as a `segserve serve` process killed with SIGKILL.


def _until_each_served(client: SegmenterClient, servers: list[RunningServer], limit: int = 200) -> None:
    """Unary calls until every replica answered one: then each is connected in the client's channel."""
    for _ in range(limit):
        if all(_served(s) for s in servers):
            return
        client.segment(SMALL)
    raise AssertionError("a replica never got a call")


@pytest.fixture
def replicas(toy_model) -> Iterator[list[RunningServer]]:
    servers = [start_server(toy_model) for _ in range(3)]
    yield servers
    for server in servers:
        server.drain_and_stop(1.0)  # a no-op for one a test stopped already


def test_targets_for_several_replicas():
    assert channel_target(["127.0.0.1:5001", "10.0.0.2:5002"]) == "ipv4:127.0.0.1:5001,10.0.0.2:5002"
    assert channel_target("127.0.0.1:5001, 127.0.0.1:5002") == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert channel_target(["[::1]:5001", "[fd00::2]:5002"]) == "ipv6:[::1]:5001,[fd00::2]:5002"
    assert channel_target(["localhost:5001", "127.0.0.2:5002"]).startswith("ipv4:127.0.0.1:5001,")
    for kept in ("dns:///segserve-headless:50051", "ipv4:10.0.0.1:1,10.0.0.2:2", "seg.example.com:443"):
        assert channel_target(kept) == kept
    assert is_loopback(["127.0.0.1:1", "localhost:2"]) and is_loopback("ipv4:127.0.0.1:1,127.0.0.2:2")
    assert not is_loopback(["127.0.0.1:1", "10.0.0.2:2"]) and is_loopback("dns:///localhost:50051")
    for bad, why in (([], "no replica"), (["10.0.0.1"], "host:port"), (["::1:5"], "brackets")):
        with pytest.raises(ValueError, match=why):
            channel_target(bad)
    with pytest.raises(ValueError, match="one family"):
        channel_target(["10.0.0.1:1", "[fd00::1]:2"])


def test_client_imports_no_inference_code():
    code = (
        "import sys, segserve.client\n"
        "heavy = ('onnxruntime', 'onnx', 'segserve.pipeline', 'segserve.engine')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_unary_calls_spread_over_replicas_call_by_call(replicas):
    with SegmenterClient([_address(s) for s in replicas]) as client:
        _until_each_served(client, replicas)
        before = [_served(s) for s in replicas]
        for i in range(30):
            client.segment(SMALL, str(i))
    assert [_served(s) - b for s, b in zip(replicas, before, strict=True)] == [10, 10, 10]


def _hold_drain_open(server: RunningServer) -> tuple[grpc.Channel, object]:
    """A stream that does not read its (large) answers: the replica's drain waits for it, so the
    replica stays up, refusing new calls, until the stream is read out."""
    channel = grpc.insecure_channel(_address(server), options=[("grpc.max_receive_message_length", 1 << 26)])
    big = jpeg(street_frame(1920, 1080))
    outputs = pb.OutputOptions(mask=pb.MASK_ENCODING_RAW, mask_resolution=pb.MASK_RESOLUTION_FRAME)
    call = pb_grpc.SegmenterStub(channel).StreamSegment(
        iter([pb.SegmentRequest(frame_id=str(i), encoded=big, outputs=outputs) for i in range(24)])
    )
    next(call)  # the stream is open on the replica
    return channel, call


@pytest.mark.parametrize("health_check", [False, True])
def test_unary_calls_survive_a_draining_replica(replicas, health_check):
    a, b = replicas[:2]
    frame = street_frame(640, 480)  # 921 KB raw: over gRPC's default 256 KiB retry buffer
    channel, held = _hold_drain_open(a)
    with SegmenterClient([_address(a), _address(b)], health_check=health_check) as client:
        _until_each_served(client, [a, b])
        drainer = threading.Thread(target=a.drain_and_stop, args=(60.0,))
        drainer.start()
        wait_draining(a.port)
        results = [client.segment(frame, str(i)) for i in range(10)]
    assert [r.frame_id for r in results] == [str(i) for i in range(10)]
    assert all(r.mask.shape == (480, 640) for r in results)
    if not health_check:  # round robin sent some to the draining replica: refused, retried on b
        assert _sample(a, "segserve_errors_total", method="Segment", code="UNAVAILABLE") >= 1
    with pytest.raises(grpc.RpcError) as ended:
        for _ in held:
            pass
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
    drainer.join()


def test_unary_calls_never_fail_while_a_replica_drains_and_stops(replicas):
    """Calls all through a replica's shutdown: refused (UNAVAILABLE), cut by the stopping server
    (CANCELLED) or a connection refused; each is retried on another replica."""
    a, b = replicas[:2]
    failures: list[str] = []
    done = threading.Event()
    answered = [0]
    with SegmenterClient([_address(a), _address(b)], health_check=False) as client:
        _until_each_served(client, [a, b])

        def call_until_done() -> None:
            while not done.is_set():
                try:
                    client.segment(SMALL)
                    answered[0] += 1
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

        callers = [threading.Thread(target=call_until_done) for _ in range(4)]
        for t in callers:
            t.start()
        a.drain_and_stop(2.0)
        done.set()
        for t in callers:
            t.join()
    assert failures == [] and answered[0] > 0


@pytest.mark.parametrize("policy", ["queue", "latest"])
def test_stream_moves_when_its_replica_drains(replicas, policy):
    servers = replicas[:2]
    frames = [street_frame(160, 120, seed=i) for i in range(12)]
    go = threading.Event()

    def source():
        yield from frames[:4]
        assert go.wait(60)
        yield from frames[4:]

    results = []
    with SegmenterClient([_address(s) for s in servers]) as client:
        for result in client.stream(source(), policy=policy, camera_id="cam-1"):
            results.append(result)
            if result.frame_id == "0":
                victim = next(s for s in servers if _sample(s, "segserve_active_streams") == 1)
                drainer = threading.Thread(target=victim.drain_and_stop, args=(60.0,))
                drainer.start()
                wait_draining(victim.port)
                go.set()  # the frames from here on cannot be accepted by the draining replica
    drainer.join()  # the client closed: its health watch no longer holds the drain open
    survivor = next(s for s in servers if s is not victim)
    assert client.stream_moves >= 1
    assert [r.frame_id for r in results] == [str(i) for i in range(12)]
    assert all(r.error is None for r in results)
    if policy == "queue":
        assert all(r.mask is not None and not r.dropped for r in results)
        assert _served(survivor, "StreamSegment") >= 8
    else:
        assert results[-1].mask is not None and _served(survivor, "StreamSegment") >= 1


class ReplicaProcess:
    """`segserve serve` in a process of its own, so it can die for real."""

    def __init__(self, model: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        args = ["--model", str(model), "--host", "127.0.0.1", "--port", "0", "--intra-op-threads", "1"]
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segserve", "serve", *args, "--metrics-port", str(self.metrics_port)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.address = ""

    def wait_listening(self) -> str:
        line = self.proc.stdout.readline()
        assert line.startswith("segserve listening on"), line
        self.address = "127.0.0.1:" + line.rsplit(":", 1)[1].strip()
        return self.address

    def sample(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and labels.items() <= s.labels.items():
                    return s.value
        return 0.0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


@pytest.mark.parametrize("policy", ["queue", "latest"])
def test_stream_resends_unanswered_frames_when_its_replica_dies(toy_model, tmp_path, policy):
    procs = [ReplicaProcess(toy_model, tmp_path / f"replica{i}.log") for i in range(2)]
    try:
        addresses = [p.wait_listening() for p in procs]
        # JPEGs of a few KB: the frames sent to the frozen replica fit its HTTP/2 window, so sending
        # them never waits on it
        frames = [jpeg(street_frame(160, 120, seed=i)) for i in range(12)]
        frozen, sent_more, killed = threading.Event(), threading.Event(), threading.Event()

        def source():
            yield from frames[:4]
            assert frozen.wait(60)
            yield from frames[4:7]  # sent to a frozen replica: they cannot have been answered
            sent_more.set()
            assert killed.wait(60)
            yield from frames[7:]

        def kill_when_sent(victim: ReplicaProcess) -> None:
            sent_more.wait(60)
            victim.proc.kill()
            victim.proc.wait()
            killed.set()

        results = []
        with SegmenterClient(addresses) as client:
            for result in client.stream(source(), policy=policy):
                results.append(result)
                if result.frame_id == "0":
                    victim = next(p for p in procs if p.sample("segserve_active_streams") == 1)
                    victim.proc.send_signal(signal.SIGSTOP)
                    threading.Thread(target=kill_when_sent, args=(victim,), daemon=True).start()
                    frozen.set()
        survivor = next(p for p in procs if p is not victim)
        assert client.stream_moves >= 1
        assert [r.frame_id for r in results] == [str(i) for i in range(12)]
        assert all(r.error is None for r in results)
        if policy == "queue":  # frames 4.. were all answered by the survivor, none lost
            assert all(r.mask is not None and not r.dropped for r in results)
            assert survivor.sample("segserve_requests_total", method="StreamSegment") >= 8
        else:  # the stream resumed with the newest frame; stale ones may be dropped, none errs
            assert results[6].mask is not None or results[6].dropped
            assert results[-1].mask is not None and not results[-1].dropped
    finally:
        for p in procs:
            p.close()


def test_stream_raises_after_bounded_reopens():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    retry = Retry(attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02, stream_reopens=2)
    with SegmenterClient([dead, dead], retry=retry) as client, pytest.raises(grpc.RpcError) as err:
        list(client.stream([SMALL]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stream_raises_what_the_frame_iterator_raised_after_answering_its_frames(target):
    def source():
        yield SMALL
        yield SMALL
        raise OSError("camera unplugged")

    results = []
    with SegmenterClient(target) as client, pytest.raises(OSError, match="camera unplugged"):
        for result in client.stream(source()):
            results.append(result)
    assert [r.frame_id for r in results] == ["0", "1"]


def test_bad_camera_id_and_retry_bounds_are_one_line_errors(target):
    with SegmenterClient(target) as client, pytest.raises(ValueError, match="camera_id"):
        next(client.stream([SMALL], camera_id="front\nleft"))
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=9)
