"""The shipped default model, served for real: native-size and 1080p frames give masks that match the
labelled CamVid fixture frames (road, cars, sky where they are)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from segserve.client import SegmenterClient
from segserve.edge.server import RunningServer
from servers import start_server

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "service" / "segserve" / "models" / "segserve-camvid.onnx"
FIXTURES = ROOT / "tests" / "fixtures" / "camvid"


def _labelled_frames() -> list[tuple[str, np.ndarray, np.ndarray]]:
    frames = []
    for image in sorted(FIXTURES.glob("*/images/*.jpg")):
        label = image.parent.parent / "labels" / f"{image.stem}.png"
        frames.append((image.stem, cv2.imread(str(image)), cv2.imread(str(label))[:, :, 0]))
    return frames


FRAMES = _labelled_frames()


@pytest.fixture(scope="module")
def client() -> Iterator[SegmenterClient]:
    running: RunningServer = start_server(MODEL)
    try:
        with SegmenterClient(f"127.0.0.1:{running.port}", timeout=60) as c:
            yield c
    finally:
        running.drain_and_stop(1.0)


def _accuracy(mask: np.ndarray, truth: np.ndarray) -> float:
    labelled = truth > 0
    return float((mask[labelled] == truth[labelled]).mean())


def test_model_info_describes_the_shipped_model(client: SegmenterClient) -> None:
    info = client.model_info()
    assert info.name == "segserve-camvid"
    assert tuple(info.input_size) in ((360, 480), (480, 360))
    names = [c.name for c in info.labels.classes]
    assert names[:5] == ["background", "sky", "building", "pole", "road"] and len(names) == 12


def test_native_size_masks_match_the_labels(client: SegmenterClient) -> None:
    assert len(FRAMES) == 8
    accuracies = []
    for name, image, truth in FRAMES:
        result = client.segment(image, name)
        assert result.error is None and result.mask.shape == truth.shape
        accuracies.append(_accuracy(result.mask, truth))
    assert min(accuracies) > 0.8, accuracies
    assert np.mean(accuracies) > 0.87, accuracies


def test_1080p_frames_are_resized_and_give_the_same_scene(client: SegmenterClient) -> None:
    ids = {c.name: c.id for c in client.model_info().labels.classes}
    road_hits = road_total = car_hits = car_total = 0
    for name, image, truth in FRAMES:
        big = cv2.resize(image, (1920, 1080), interpolation=cv2.INTER_LINEAR)
        result = client.segment(big, name)
        assert result.mask.shape == (1080, 1920)
        small = cv2.resize(result.mask, truth.shape[::-1], interpolation=cv2.INTER_NEAREST)
        assert _accuracy(small, truth) > 0.7, name
        road = truth == ids["road"]
        road_hits += int((small[road] == ids["road"]).sum())
        road_total += int(road.sum())
        car = truth == ids["car"]
        car_hits += int((small[car] == ids["car"]).sum())
        car_total += int(car.sum())
        # the top rows are never road, the bottom-centre patch is never sky
        h, w = small.shape
        assert (small[: h // 8] == ids["road"]).mean() < 0.05, name
        assert (small[-h // 6 :, w // 3 : 2 * w // 3] == ids["sky"]).mean() < 0.05, name
    assert road_hits / road_total > 0.9
    assert car_total > 10_000 and car_hits / car_total > 0.6  # the fixtures hold cars, and they are found
