"""The bench's ModelInfer rows, run briefly against a real server: both methods answer the same number
of frames with the same outputs, and the acceptance entry comes from their p50s (no timing asserted)."""

from __future__ import annotations

from frames import jpeg, street_frame
from oiputil import MODEL_NAME
from segserve.bench.measure import model_infer_vs_segment
from segserve.bench.run import model_infer_acceptance


def test_model_infer_rows_and_acceptance(url):
    jpegs = [jpeg(street_frame(640, 360, seed=s)) for s in range(3)]
    rows = model_infer_vs_segment(url, MODEL_NAME, jpegs, frames=4, warmup=1, callers=(1, 2))
    for k, n in (("1", 4), ("2", 4)):
        row = rows[k]
        assert row["segment"]["n"] == row["model_infer"]["n"] == n
        assert sum(row["model_infer"]["batch_sizes"].values()) == n
        assert row["p50_ratio"] == round(row["model_infer"]["p50"] / row["segment"]["p50"], 3)
    acceptance = model_infer_acceptance({"model_infer": rows})
    entry = acceptance["d_model_infer_over_segment_p50_2_callers"]
    assert entry["value"] == rows["2"]["p50_ratio"] and entry["pass"] == (entry["value"] <= 1.10)
