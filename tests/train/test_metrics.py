from __future__ import annotations

import numpy as np
from segserve.train.metrics import confusion_matrix, miou_from_confusion


def test_miou_ignores_background() -> None:
    truth = np.array([[0, 1, 1, 2]], np.uint8)
    pred = np.array([[2, 1, 2, 2]], np.uint8)
    conf = confusion_matrix(truth, pred, 3)
    assert conf.sum() == 3  # the background pixel is not counted
    res = miou_from_confusion(conf)
    assert res["iou"][0] is None
    assert res["iou"][1] == 0.5 and res["iou"][2] == 0.5
    assert res["miou"] == 0.5
    assert abs(res["pixel_accuracy"] - 2 / 3) < 1e-9
