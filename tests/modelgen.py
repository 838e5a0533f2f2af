"""Small ONNX models built with onnx.helper, for tests (never downloaded).

``float_logits_model``: the usual export shape, float [N, 3, H, W] -> logits [N, C, H/s, W/s];
``served_model_file``: the same network wrapped into the served uint8 contract, with its label map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from segserve.graph import prepare_model
from segserve.labels import LabelMap


def float_logits_model(
    num_classes: int = 6,
    height: int = 48,
    width: int = 64,
    stride: int = 1,
    seed: int = 0,
    batch: int | str = "N",
) -> onnx.ModelProto:
    """A 3x3 conv over colour (seeded weights), optionally average-pooled to a coarser stride."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 1, (num_classes, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, num_classes).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1])]
    out_h, out_w = height, width
    if stride > 1:
        nodes.append(
            helper.make_node(
                "AveragePool", ["conv"], ["logits"], kernel_shape=[stride, stride], strides=[stride, stride]
            )
        )
        out_h, out_w = height // stride, width // stride
    else:
        nodes.append(helper.make_node("Identity", ["conv"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "toy_seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes, out_h, out_w])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def served_model_file(path: Path, num_classes: int = 6, height: int = 48, width: int = 64, **kw) -> Path:
    """Write a served-contract model (uint8 NHWC in, uint8 ids out) with label metadata."""
    prepared = prepare_model(float_logits_model(num_classes, height, width, **kw))
    model = prepared.model
    labels = LabelMap.default(num_classes)
    for key, value in {"labels": labels.to_json(), "name": "toy", "version": "1"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path
