"""The served model contract, and the wrapper that makes an exported network fit it.

Served contract: input ``images`` uint8 ``[N, H, W, 3]`` RGB, output ``labels`` uint8 ``[N, H, W]``
class ids; channel order, layout, normalisation and argmax live in the graph, so only uint8 crosses
to and from the device.

"Bring your own model": ``modelform.analyse`` decides what a network needs (see there); this module
builds it around the network at load time, never editing the file:

- in front: [Slice: RGB -> BGR] [Cast -> Transpose -> Sub(mean) -> Mul(1/std) -> Cast(float16)]
  for a float input, or only [Slice] [Transpose] for a uint8 one;
- behind, for class scores: [Cast(float32)] [Resize(linear) to the input size] -> ArgMax -> Cast;
  for class ids: [Clip -> Cast(uint8)] [Squeeze] [Resize(nearest) to the input size];
- outputs other than the mask are dropped and the nodes only they needed are pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from segserve.errors import ModelError
from segserve.labels import LabelMap
from segserve.modelform import (
    BGR,
    IDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NCHW,
    NHWC,
    PROCESSING_KEYS,
    RGB,
    InputForm,
    ModelForm,
    ModelOptions,
    OutputForm,
    TensorSpec,
    analyse,
    opset_of,
    outputs,
    real_inputs,
)

__all__ = [
    "FRAMES_NAME",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ModelMetadata",
    "ModelOptions",
    "PreparedModel",
    "TensorSpec",
    "add_input_resize",
    "graph_io",
    "load_onnx",
    "prepare_model",
]

INPUT_NAME = "images"
OUTPUT_NAME = "labels"
FRAMES_NAME = "frames"  # the input of a resize-in-graph model: BGR uint8 [N, h, w, 3] at any size
MIN_OPSET = 13  # the wrapper's nodes take their axes and sizes as inputs


@dataclass(frozen=True)
class ModelMetadata:
    """What the service needs to know about a prepared (served-contract) model; what GetModelInfo shows."""

    name: str
    version: str
    input_height: int
    input_width: int
    labels: LabelMap
    dynamic_batch: bool
    wrapped: bool
    mean: tuple[float, float, float]  # as given: the model's channel order, the input range's units
    std: tuple[float, float, float]
    channel_order: str = RGB
    input_range: str | None = "0..255"  # None: a uint8 input the model normalises itself
    input_layout: str = NHWC
    input_type: str = "uint8"
    static_batch: int | None = None  # the model's fixed batch size; None when dynamic
    output_name: str = OUTPUT_NAME
    output_kind: str = IDS  # "scores" (argmax in the graph) or "ids"
    label_source: str = ""


@dataclass(frozen=True)
class PreparedModel:
    model: onnx.ModelProto
    metadata: ModelMetadata
    form: ModelForm | None = None


def graph_io(model: onnx.ModelProto) -> tuple[TensorSpec, TensorSpec]:
    """The single real input (initializers excluded) and the first output."""
    inputs, outs = real_inputs(model), outputs(model)
    if len(inputs) != 1:
        raise ModelError(f"the model must have exactly one image input, it has {[i.name for i in inputs]}")
    if not outs:
        raise ModelError("the model has no output")
    return inputs[0], outs[0]


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere in a graph (nodes, graph I/O, initializers, value_info, subgraphs)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                _rename_value(sub, old, new)
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _names_used(graph: onnx.GraphProto) -> set[str]:
    """Every value a graph's nodes read, subgraphs included (a superset of their outer references)."""
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                used |= _names_used(sub)
    return used


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in [*graph.input, *graph.output, *graph.initializer, *graph.value_info]}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                names |= _all_names(sub)
    return names


def _free_tag(graph: onnx.GraphProto) -> str:
    """``segserve``, or ``segserve2``, ...: a prefix no value of the graph starts with."""
    names = _all_names(graph)
    for n in range(1, 1000):
        tag = "segserve" if n == 1 else f"segserve{n}"
        if not any(name.startswith(tag + "_") for name in names):
            return tag
    raise ModelError("the model already holds segserve's wrapping a thousand times over")


def _keep_only(graph: onnx.GraphProto, output: str) -> None:
    """Drop every graph output but ``output``, and the nodes and initializers only the others needed."""
    kept_outputs = [o for o in graph.output if o.name == output]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    needed, kept = {output}, []
    for node in reversed(graph.node):  # nodes are topologically sorted (an ONNX requirement)
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            for attr in node.attribute:
                for sub in _subgraphs(attr):
                    needed |= _names_used(sub)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


class _Chain:
    """Nodes applied one after another to a running value, with their constants."""

    def __init__(self, prefix: str, start: str):
        self.prefix, self.value = prefix, start
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        full = f"{self.prefix}_{name}"
        self.consts.append(numpy_helper.from_array(array, full))
        return full

    def add(self, op: str, *extra: str, name: str | None = None, **attrs) -> str:
        out = f"{self.prefix}_{name or op.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, [self.value, *extra], [out], **attrs))
        self.value = out
        return out

    def side(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        """A node off the chain (shape arithmetic); returns its output."""
        out = f"{self.prefix}_{name}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def end_as(self, name: str) -> None:
        if not self.nodes:
            raise ValueError("an empty chain cannot be renamed")
        self.nodes[-1].output[0] = name


def _i64(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


def _preprocess(inp: InputForm, tag: str) -> _Chain:
    """uint8 RGB NHWC ``images`` -> what the network's input wants."""
    chain = _Chain(f"{tag}_pre", INPUT_NAME)
    if inp.channel_order.value == BGR:
        chain.add(
            "Slice",
            chain.const("c_start", _i64(2)),
            chain.const("c_end", _i64(np.iinfo(np.int64).min)),
            chain.const("c_axis", _i64(3)),
            chain.const("c_step", _i64(-1)),
            name="bgr",
        )
    nchw = inp.layout.value == NCHW
    if not inp.normalises:
        if nchw:
            chain.add("Transpose", perm=[0, 3, 1, 2])
        return chain
    stat_shape = (1, 3, 1, 1) if nchw else (1, 1, 1, 3)
    mean, std = inp.pixel_mean_std()
    chain.add("Cast", to=TensorProto.FLOAT)
    if nchw:
        chain.add("Transpose", perm=[0, 3, 1, 2])
    chain.add("Sub", chain.const("mean", np.asarray(mean, np.float32).reshape(stat_shape)))
    chain.add("Mul", chain.const("inv_std", (1.0 / np.asarray(std, np.float32)).reshape(stat_shape)))
    if inp.spec.elem_type != TensorProto.FLOAT:
        chain.add("Cast", to=inp.spec.elem_type)
    return chain


def _target_sizes(chain: _Chain, height: int, width: int, class_axis: int) -> str:
    """A Resize ``sizes`` tensor: the running value's N (and C) with the input's H, W."""
    shape = chain.side("Shape", [chain.value], "shape")
    hw = chain.const("hw", _i64(height, width))
    if class_axis == 1:
        nc = chain.side("Slice", [shape, chain.const("s0", _i64(0)), chain.const("s2", _i64(2))], "nc")
        return chain.side("Concat", [nc, hw], "sizes", axis=0)
    n = chain.side("Slice", [shape, chain.const("s0", _i64(0)), chain.const("s1", _i64(1))], "n")
    c = chain.side("Slice", [shape, chain.const("s3", _i64(3)), chain.const("s4", _i64(4))], "c")
    return chain.side("Concat", [n, hw, c], "sizes", axis=0)


def _postprocess(out: OutputForm, height: int, width: int, tag: str) -> _Chain:
    """The network's chosen output (``{tag}_net_output``) -> uint8 ``labels`` [N, H, W]."""
    chain = _Chain(f"{tag}_post", f"{tag}_net_output")
    at_size = out.at_size(height, width)
    if out.kind == IDS:
        if out.spec.elem_type != TensorProto.UINT8:
            if out.spec.elem_type not in (TensorProto.INT32, TensorProto.INT64):
                chain.add("Cast", to=TensorProto.INT32)
            itype = np.int64 if out.spec.elem_type == TensorProto.INT64 else np.int32
            # An id outside 0..255 (an "ignore" -1, or more classes than uint8 holds) becomes 255,
            # never another class.
            low, high = chain.const("lo", np.asarray(-1, itype)), chain.const("hi", np.asarray(255, itype))
            chain.add("Clip", low, high)
            chain.add("Cast", to=TensorProto.UINT8)
        if out.axis is not None:
            chain.add("Squeeze", chain.const("squeeze_axis", _i64(out.axis)))
        if not at_size:
            chain.add("Unsqueeze", chain.const("channel_axis", _i64(1)))
            sizes = _target_sizes(chain, height, width, 1)
            chain.add(
                "Resize",
                "",
                "",
                sizes,
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
            chain.add("Squeeze", chain.const("resized_axis", _i64(1)))
        return chain
    assert out.axis is not None
    if out.spec.elem_type != TensorProto.FLOAT:
        chain.add("Cast", to=TensorProto.FLOAT)  # argmax and resize in float32 on every provider
    if not at_size:
        sizes = _target_sizes(chain, height, width, out.axis)
        chain.add("Resize", "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    chain.add("ArgMax", axis=out.axis, keepdims=0)
    chain.add("Cast", to=TensorProto.UINT8)
    return chain


def _with_opset(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    opset = opset_of(model)
    if opset >= MIN_OPSET:
        return model
    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises its own errors for unconvertible nodes
        raise ModelError(
            f"{source} uses opset {opset}; wrapping needs opset {MIN_OPSET} or newer and converting it "
            f"failed ({str(exc).splitlines()[0]}): re-export it with opset_version={MIN_OPSET} or newer"
        ) from exc
    return converted


def build_served(
    model: onnx.ModelProto, form: ModelForm, source: str = "the model"
) -> tuple[onnx.ModelProto, bool]:
    """The model in the served contract as ``form`` says, and whether nodes were added around it.

    ``model`` itself is left as it was.
    """
    inp, out = form.input, form.output
    height, width = inp.size.value
    tag = _free_tag(model.graph)  # names of the added nodes never meet the model's (a wrapped one, too)
    net_in, net_out = f"{tag}_net_input", f"{tag}_net_output"
    pre, post = _preprocess(inp, tag), _postprocess(out, height, width, tag)
    if pre.nodes or post.nodes:
        model = _with_opset(model, source)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's copy
    g = model.graph
    _keep_only(g, out.spec.name)
    _rename_value(g, inp.spec.name, net_in)
    _rename_value(g, out.spec.name, net_out)
    for name in (INPUT_NAME, OUTPUT_NAME):  # an inner value under a contract name moves aside
        _rename_value(g, name, f"{tag}_inner_{name}")
    if pre.nodes:
        pre.end_as(net_in)
    else:
        _rename_value(g, net_in, INPUT_NAME)
    if post.nodes:
        post.end_as(OUTPUT_NAME)
    else:
        _rename_value(g, net_out, OUTPUT_NAME)
    batch = inp.static_batch or "N"
    graph = helper.make_graph(
        [*pre.nodes, *g.node, *post.nodes],
        g.name or "segserve_wrapped",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [batch, height, width, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.UINT8, [batch, height, width])],
        initializer=[*g.initializer, *pre.consts, *post.consts],
        value_info=[v for v in g.value_info if v.name not in (net_in, net_out)],
    )
    graph.sparse_initializer.extend(g.sparse_initializer)
    served = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    served.functions.extend(model.functions)
    for key, value in form.metadata.items():
        if key not in PROCESSING_KEYS:
            served.metadata_props.add(key=key, value=value)
    if inp.normalises:  # what is now baked in, on the served RGB 0..255 input
        mean, std = inp.pixel_mean_std()
        if inp.channel_order.value == BGR:
            mean, std = mean[::-1], std[::-1]
        served.metadata_props.add(key="mean", value=str([round(v, 6) for v in mean]))
        served.metadata_props.add(key="std", value=str([round(v, 6) for v in std]))
    return served, bool(pre.nodes or post.nodes)


def load_onnx(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """The model and its path. Raises ModelError for a missing or unreadable file."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        return onnx.load(str(path)), path
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc


def prepare_model(
    source: str | Path | onnx.ModelProto,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    input_size: tuple[int, int] | None = None,
    options: ModelOptions | None = None,
) -> PreparedModel:
    """Load a model and return it in the served contract, with its metadata and the form found.

    ``mean``, ``std`` and ``input_size`` override the same fields of ``options``. Raises ModelError
    when the model fits no form segserve can serve without guessing.
    """
    given: dict[str, Any] = {"mean": mean, "std": std, "input_size": input_size}
    options = replace(options or ModelOptions(), **{k: v for k, v in given.items() if v is not None})
    model, path = load_onnx(source)
    form = analyse(model, options, path)
    served, wrapped = build_served(model, form, str(path) if path else "the model")
    meta = form.metadata
    inp, out = form.input, form.output
    height, width = inp.size.value
    metadata = ModelMetadata(
        name=meta.get("name") or (path.stem if path else "model"),
        version=meta.get("version") or str(model.model_version or 1),
        input_height=height,
        input_width=width,
        labels=form.labels.value,
        dynamic_batch=inp.static_batch is None,
        wrapped=wrapped,
        mean=inp.mean.value,
        std=inp.std.value,
        channel_order=inp.channel_order.value,
        input_range=inp.input_range.value if inp.input_range else None,
        input_layout=inp.layout.value,
        input_type=inp.spec.type_name,
        static_batch=inp.static_batch,
        output_name=out.spec.name,
        output_kind=out.kind or "",
        label_source=form.labels.source,
    )
    return PreparedModel(served, metadata, form)


def add_input_resize(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    """Put BGR->RGB and the resize to the model's input size inside the graph.

    The new input ``frames`` takes decoded BGR uint8 frames of any size (one size per batch), so the
    CPU does no pixel work before the network. Labels come out at the model's input size.
    """
    g = model.graph
    if opset_of(model) < MIN_OPSET:
        raise ModelError(f"resizing in the graph needs opset {MIN_OPSET} or newer")
    batch = graph_io(model)[0].shape[0]
    consts = [
        numpy_helper.from_array(np.asarray([0], np.int64), "segserve_n_start"),
        numpy_helper.from_array(np.asarray([1], np.int64), "segserve_n_end"),
        numpy_helper.from_array(np.asarray([height, width, 3], np.int64), "segserve_hw3"),
        numpy_helper.from_array(np.asarray([2], np.int64), "segserve_c_start"),
        numpy_helper.from_array(np.asarray([-4], np.int64), "segserve_c_end"),
        numpy_helper.from_array(np.asarray([3], np.int64), "segserve_c_axis"),
        numpy_helper.from_array(np.asarray([-1], np.int64), "segserve_c_step"),
    ]
    nodes = [
        helper.make_node("Shape", [FRAMES_NAME], ["segserve_fshape"]),
        helper.make_node("Slice", ["segserve_fshape", "segserve_n_start", "segserve_n_end"], ["segserve_n"]),
        helper.make_node("Concat", ["segserve_n", "segserve_hw3"], ["segserve_rsizes"], axis=0),
        helper.make_node(
            "Slice",
            [FRAMES_NAME, "segserve_c_start", "segserve_c_end", "segserve_c_axis", "segserve_c_step"],
            ["segserve_rgb"],
        ),
        helper.make_node(
            "Resize",
            ["segserve_rgb", "", "", "segserve_rsizes"],
            [INPUT_NAME],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
    ]
    frames = helper.make_tensor_value_info(FRAMES_NAME, TensorProto.UINT8, [batch, "h", "w", 3])
    graph = helper.make_graph(
        [*nodes, *g.node],
        g.name,
        [frames],
        list(g.output),
        initializer=[*g.initializer, *consts],
        value_info=list(g.value_info),
    )
    resized = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    resized.functions.extend(model.functions)
    for prop in model.metadata_props:
        resized.metadata_props.add(key=prop.key, value=prop.value)
    return resized
