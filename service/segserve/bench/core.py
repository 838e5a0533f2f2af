"""Cut the float network out of a served model: normalised float NCHW in, float logits out.

The served graph is ``uint8 NHWC -> [Cast, Transpose, Sub/Add, Mul/Div] -> network -> [Resize] ->
ArgMax -> Cast``. The naive reference does the pre- and post-processing in numpy, so it needs the
network alone: from the tensor the pre-processing chain ends in, to the ArgMax's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from segserve.graph import INPUT_NAME, OUTPUT_NAME

_PRE_OPS = {"Cast", "Transpose", "Sub", "Add", "Mul", "Div"}


@dataclass(frozen=True)
class FloatCore:
    model: onnx.ModelProto
    input_name: str
    output_name: str
    pre_ops: tuple[str, ...]  # the pre-processing nodes left out (for the report)


def extract_float_core(served: onnx.ModelProto) -> FloatCore:
    """Raises ValueError when the graph does not have the served shape described above."""
    g = served.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    inputs = {i.name for i in g.input} - {i.name for i in g.initializer}
    start = INPUT_NAME if INPUT_NAME in inputs else next(iter(inputs))
    current, pre = start, []
    while len(consumers.get(current, [])) == 1 and consumers[current][0].op_type in _PRE_OPS:
        node = consumers[current][0]
        pre.append(node.op_type)
        current = node.output[0]
    if not pre:
        raise ValueError("no pre-processing chain (Cast/Transpose/Sub/Mul) after the uint8 input")
    argmax = [n for n in g.node if n.op_type == "ArgMax"]
    if len(argmax) != 1:
        raise ValueError(f"expected one ArgMax node, found {len(argmax)}")
    logits = argmax[0].input[0]

    keep: set[int] = set()
    stack = [logits]
    seen = {current}
    initializers = {i.name: i for i in g.initializer}
    while stack:
        name = stack.pop()
        if name in seen or name in initializers or not name:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None:
            raise ValueError(f"tensor {name!r} has no producer between the normalised input and the logits")
        keep.add(id(node))
        stack.extend(node.input)
    nodes = [n for n in g.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes,
        "float_core",
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", 3, None, None])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, None)],
        initializer=[initializers[n] for n in used if n in initializers],
        value_info=[v for v in g.value_info if v.name in used],
    )
    model = helper.make_model(graph, opset_imports=list(served.opset_import), ir_version=served.ir_version)
    model.functions.extend(served.functions)
    assert OUTPUT_NAME not in {o for n in nodes for o in n.output}
    return FloatCore(model, current, logits, tuple(pre))
