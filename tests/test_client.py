import subprocess
import sys

import cv2
import grpc
import numpy as np
import pytest
from frames import jpeg, street_frame
from segserve.client import SegmenterClient, is_loopback


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
