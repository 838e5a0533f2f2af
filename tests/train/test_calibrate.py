from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segserve.train.calibrate import apply_offsets, fit_offsets  # noqa: E402
from segserve.train.model import ModelConfig, SegNetRT  # noqa: E402


def test_offsets_undo_a_prior_shift() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, 3000)
    logits = rng.normal(0, 1, (3000, 4)).astype(np.float32)
    logits[np.arange(3000), truth] += 2.0
    logits[:, 3] += 1.5  # class 3 over-predicted, as class weights do to rare classes
    offsets, before, after = fit_offsets(logits, truth)
    assert after > before + 0.05
    assert offsets[0] == 0 and offsets[3] < min(offsets[1], offsets[2])


def test_apply_offsets_shifts_the_logits() -> None:
    net = SegNetRT(ModelConfig(num_classes=3)).eval()
    x = torch.randn(1, 3, 64, 64)
    before = net(x)
    apply_offsets(net, np.array([0.0, 1.0, -1.0], np.float32))
    diff = net(x) - before
    assert torch.allclose(diff[:, 1], torch.ones_like(diff[:, 1]), atol=1e-5)
    assert torch.allclose(diff[:, 2], -torch.ones_like(diff[:, 2]), atol=1e-5)
