from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the arena cap is glibc's")
def test_the_arena_cap_is_taken_by_glibc() -> None:
    # in a fresh interpreter: the cap is meant to be set before the server's threads start
    code = "from segserve import malloc; print(malloc.bound_retention())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"
