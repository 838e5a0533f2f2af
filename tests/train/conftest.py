"""Shared fixtures: the eight CamVid frames under tests/fixtures/camvid/."""

from __future__ import annotations

from pathlib import Path

import pytest

CAMVID = Path(__file__).resolve().parents[1] / "fixtures" / "camvid"


@pytest.fixture(scope="session")
def camvid() -> Path:
    return CAMVID
