"""Where warm-up ends: the first frames of a run pay for lazy initialisation, not for steady work.

The first inference of an ONNX Runtime session allocates its arenas and picks kernels, the first
frames also fill the connection's windows and the executors' threads; a file source paced in real
time then needs a few frames to drain the backlog that spike made. Averaged together with steady
state, those frames make p95/p99 meaningless for a run of a few hundred frames.

The rule (``RULE``): the bound is ``FACTOR`` x the median latency of the run's second half (the
steady reference, which warm-up cannot reach) plus ``SLACK_MS``, so a very fast run is not split on
jitter. Warm-up ends at the first answered frame that is within the bound and from which at least
``RUN - 1`` of ``RUN`` consecutive frames are: one dip inside the warm-up does not end it, one spike
early in a steady run does not start one. Never more than half the answered frames; a run that
starts steady has no warm-up frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RUN = 5
FACTOR = 1.5
SLACK_MS = 2.0
RULE = (
    f"warm-up ends at the first frame within {FACTOR}x the median latency of the run's second half "
    f"(+{SLACK_MS:g} ms) from which at least {RUN - 1} of {RUN} consecutive frames are; at most half "
    "the frames"
)


def warmup_frames(latencies_ms: Sequence[float]) -> int:
    """How many leading values of ``latencies_ms`` (answered frames, in order) are warm-up."""
    n = len(latencies_ms)
    if n < 2 * RUN:
        return 0  # too short to tell warm-up from steady state
    values = np.asarray(latencies_ms, dtype=np.float64)
    bound = FACTOR * float(np.median(values[n // 2 :])) + SLACK_MS
    settled = values <= bound
    for start in range(n // 2 + 1):
        if settled[start] and settled[start : start + RUN].sum() >= RUN - 1:
            return start
    return n // 2
