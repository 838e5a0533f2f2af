"""``segserve bench``: latency and throughput of every layer, measured in one run on the same frames.

bare ONNX Runtime (batch 1..N) -> in-process ``Pipeline.process`` -> ``Segment`` over gRPC on loopback ->
``StreamSegment`` with 1, 2, 4, 8 streams, and the naive numpy reference (``benchmarks/naive_pipeline.py``).
"""
