"""Constants and helpers the OIP tests share (a module of its own: ``conftest`` names are ambiguous)."""

from __future__ import annotations

import numpy as np
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc

MODEL_HW = (96, 128)
MODEL_NAME = "toy"  # the name tests/modelgen.py writes into the model's metadata
MAX_BATCH = 8
MODEL_SIZE_RAW = pb.OutputOptions(mask=pb.MASK_ENCODING_RAW, mask_resolution=pb.MASK_RESOLUTION_MODEL)


def segment_mask(
    stub: pb_grpc.SegmenterStub, *, encoded: bytes | None = None, rgb: np.ndarray | None = None
) -> np.ndarray:
    """``Segment``'s class ids at the model's size for an encoded frame or an RGB frame."""
    if encoded is not None:
        request = pb.SegmentRequest(frame_id="ref", encoded=encoded, outputs=MODEL_SIZE_RAW)
    else:
        assert rgb is not None
        h, w = rgb.shape[:2]
        raw = pb.RawImage(width=w, height=h, format=pb.PIXEL_FORMAT_RGB8, data=rgb.tobytes())
        request = pb.SegmentRequest(frame_id="ref", raw=raw, outputs=MODEL_SIZE_RAW)
    mask = stub.Segment(request, timeout=60).mask
    return np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)
