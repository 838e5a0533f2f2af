"""segserve: real-time semantic segmentation over gRPC with ONNX Runtime."""

__version__ = "0.1.0"
