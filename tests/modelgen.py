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


def byo_model(
    num_classes: int = 6,
    height: int = 48,
    width: int = 64,
    *,
    seed: int = 0,
    batch: int | str = "N",
    layout: str = "nchw",
    elem_type: int = TensorProto.FLOAT,
    output: str = "scores",
    stride: int = 1,
    aux: bool = False,
    metadata: dict[str, str] | None = None,
    opset: int = 17,
    gain: float = 1.0,
) -> onnx.ModelProto:
    """A network in one of the forms people export, for the bring-your-own-model tests.

    ``elem_type``: the input's type (FLOAT, FLOAT16 or UINT8; a uint8 model computes
    ``(x - 128) / 64`` itself) and, for FLOAT16, the scores' type too. ``layout``: ``nchw`` or
    ``nhwc`` (scores in the same layout). ``output``: ``scores`` (``logits``), ``ids64`` (int64
    ``[N, h, w]`` ``ids``) or ``ids32`` (int32 ``[N, 1, h, w]`` ``ids``). ``stride`` average-pools
    the scores to a coarser grid. ``aux`` adds a second scores output ``aux``, listed first.
    ``gain`` scales the weights, for inputs normalised to a small range (ESPNet's ``/ 255``).
    """
    rng = np.random.default_rng(seed)
    nhwc = layout == "nhwc"
    inits = [
        numpy_helper.from_array((gain * rng.normal(0, 1, (num_classes, 3, 3, 3))).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, num_classes).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 1, (num_classes, 3, 3, 3)).astype(np.float32), "w_aux"),
        numpy_helper.from_array(np.zeros(num_classes, np.float32), "b_aux"),
        numpy_helper.from_array(np.asarray(128.0, np.float32), "u8_mean"),
        numpy_helper.from_array(np.asarray(1 / 64, np.float32), "u8_scale"),
    ]
    nodes, cur = [], "input"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [cur], ["x_nchw"], perm=[0, 3, 1, 2]))
        cur = "x_nchw"
    if elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [cur], ["x_f"], to=TensorProto.FLOAT))
        cur = "x_f"
    if elem_type == TensorProto.UINT8:
        nodes += [
            helper.make_node("Sub", [cur, "u8_mean"], ["x_c"]),
            helper.make_node("Mul", ["x_c", "u8_scale"], ["x_n"]),
        ]
        cur = "x_n"
    out_h, out_w = height // stride, width // stride
    graph_outputs = []
    heads = [("aux", "w_aux", "b_aux")] if aux else []
    heads.append(("main", "w", "b"))
    for head, w, b in heads:
        nodes.append(helper.make_node("Conv", [cur, w, b], [f"{head}_conv"], pads=[1, 1, 1, 1]))
        scores = f"{head}_conv"
        if stride > 1:
            nodes.append(
                helper.make_node(
                    "AveragePool", [scores], [f"{head}_pool"], kernel_shape=[stride] * 2, strides=[stride] * 2
                )
            )
            scores = f"{head}_pool"
        name = "aux" if head == "aux" else "logits"
        if head == "main" and output == "ids64":
            nodes.append(helper.make_node("ArgMax", [scores], ["ids"], axis=1, keepdims=0))
            graph_outputs.append(
                helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, out_h, out_w])
            )
            continue
        if head == "main" and output == "ids32":
            nodes += [
                helper.make_node("ArgMax", [scores], ["ids64"], axis=1, keepdims=1),
                helper.make_node("Cast", ["ids64"], ["ids"], to=TensorProto.INT32),
            ]
            graph_outputs.append(
                helper.make_tensor_value_info("ids", TensorProto.INT32, [batch, 1, out_h, out_w])
            )
            continue
        out_type = TensorProto.FLOAT16 if elem_type == TensorProto.FLOAT16 else TensorProto.FLOAT
        if out_type != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [scores], [f"{head}_half"], to=out_type))
            scores = f"{head}_half"
        if nhwc:
            nodes.append(helper.make_node("Transpose", [scores], [name], perm=[0, 2, 3, 1]))
            shape = [batch, out_h, out_w, num_classes]
        else:
            nodes.append(helper.make_node("Identity", [scores], [name]))
            shape = [batch, num_classes, out_h, out_w]
        graph_outputs.append(helper.make_tensor_value_info(name, out_type, shape))
    in_shape = [batch, height, width, 3] if nhwc else [batch, 3, height, width]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "byo",
        [helper.make_tensor_value_info("input", elem_type, in_shape)],
        graph_outputs,
        [i for i in inits if i.name in used],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model
