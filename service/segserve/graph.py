"""The served model contract, and the wrapper that makes any exported network fit it.

Served contract: input ``images`` uint8 ``[N, H, W, 3]`` RGB, output ``labels`` uint8 ``[N, H, W]``
class ids; normalisation and argmax live in the graph, so only uint8 crosses to and from the device.
A static H and W in the input shape is the model's input size.

"Bring your own model": a network with the usual float ``[N, 3, H, W]`` input and ``[N, C, h, w]``
logits output (what ``torch.onnx.export`` of a segmentation net gives) is wrapped at load time with
Cast -> Transpose -> Sub(mean) -> Mul(1/std) in front and [Resize ->] ArgMax -> Cast(uint8) behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segserve.errors import ModelError
from segserve.labels import LabelMap

INPUT_NAME = "images"
OUTPUT_NAME = "labels"
FRAMES_NAME = "frames"  # the input of a resize-in-graph model: BGR uint8 [N, h, w, 3] at any size
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
_INTEGERS = {TensorProto.INT64, TensorProto.INT32, TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: int
    shape: tuple[int | str | None, ...]  # int: static, str: symbolic, None: unknown


@dataclass(frozen=True)
class ModelMetadata:
    """What the service needs to know about a prepared (served-contract) model."""

    name: str
    version: str
    input_height: int
    input_width: int
    labels: LabelMap
    dynamic_batch: bool
    wrapped: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class PreparedModel:
    model: onnx.ModelProto
    metadata: ModelMetadata


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    ttype = value.type.tensor_type
    dims: list[int | str | None] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(value.name, ttype.elem_type, tuple(dims))


def graph_io(model: onnx.ModelProto) -> tuple[TensorSpec, TensorSpec]:
    """The single real input (initializers excluded) and the first output."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"the model must have exactly one image input, it has {[i.name for i in inputs]}")
    if not model.graph.output:
        raise ModelError("the model has no output")
    return _tensor_spec(inputs[0]), _tensor_spec(model.graph.output[0])


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _triple(text: str | None, default: tuple[float, float, float], key: str) -> tuple[float, float, float]:
    if text is None:
        return default
    try:
        values = tuple(float(v) for v in json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"model metadata {key!r} must be a JSON list of 3 numbers, got {text!r}") from exc
    if len(values) != 3:
        raise ModelError(f"model metadata {key!r} must have 3 values (R, G, B), got {len(values)}")
    return values  # type: ignore[return-value]


def _static(dim: int | str | None, what: str, override: int | None) -> int:
    if override:
        return override
    if isinstance(dim, int) and dim > 0:
        return dim
    raise ModelError(f"the model's {what} is dynamic ({dim!r}): give the input size with --input-size HxW")


def is_served_contract(inp: TensorSpec, out: TensorSpec) -> bool:
    return (
        inp.elem_type == TensorProto.UINT8
        and len(inp.shape) == 4
        and inp.shape[3] == 3
        and out.elem_type == TensorProto.UINT8
        and len(out.shape) == 3
    )


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere in a graph (node inputs/outputs, graph I/O, value_info, subgraphs)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attr in node.attribute:
            for sub in (
                [attr.g, *attr.graphs]
                if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                else []
            ):
                _rename_value(sub, old, new)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def wrap_float_model(
    model: onnx.ModelProto,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    input_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """Wrap a float network into the served uint8 contract.

    Takes NCHW input with NCHW logits (PyTorch's layout) or NHWC input with NHWC logits
    (TensorFlow's); the logits may be at a coarser stride than the input.
    """
    inp, out = graph_io(model)
    nhwc = len(inp.shape) == 4 and inp.shape[3] == 3 and inp.shape[1] != 3
    if inp.elem_type not in _FLOATS or len(inp.shape) != 4 or not (nhwc or inp.shape[1] in (3, None, "C")):
        raise ModelError(
            f"cannot wrap input {inp.name!r}: expected float [N, 3, H, W] (or [N, H, W, 3]), got type "
            f"{TensorProto.DataType.Name(inp.elem_type)} shape {list(inp.shape)}"
        )
    if len(out.shape) != 4:
        raise ModelError(
            f"cannot wrap output {out.name!r}: expected logits [N, C, h, w], got shape {list(out.shape)}"
        )
    if _opset(model) < 13:
        raise ModelError(
            f"the model's opset is {_opset(model)}; wrapping needs opset 13 or newer (re-export it)"
        )
    h_axis, w_axis, c_axis = (1, 2, 3) if nhwc else (2, 3, 1)
    num_classes = out.shape[c_axis]
    if isinstance(num_classes, int) and num_classes > 256:
        raise ModelError(f"the model has {num_classes} classes; uint8 class ids hold at most 256")
    height = _static(inp.shape[h_axis], "input height", input_size[0] if input_size else None)
    width = _static(inp.shape[w_axis], "input width", input_size[1] if input_size else None)

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's copy
    g = model.graph
    net_in, net_out = "segserve_net_input", "segserve_net_logits"
    _rename_value(g, inp.name, net_in)
    _rename_value(g, out.name, net_out)
    batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else "N"
    stat_shape = (1, 1, 1, 3) if nhwc else (1, 3, 1, 1)
    consts = [
        numpy_helper.from_array(np.asarray(mean, np.float32).reshape(stat_shape), "segserve_mean"),
        numpy_helper.from_array((1.0 / np.asarray(std, np.float32)).reshape(stat_shape), "segserve_inv_std"),
    ]
    pre = [helper.make_node("Cast", [INPUT_NAME], ["segserve_f"], to=TensorProto.FLOAT)]
    if nhwc:
        pre.append(helper.make_node("Identity", ["segserve_f"], ["segserve_layout"]))
    else:
        pre.append(helper.make_node("Transpose", ["segserve_f"], ["segserve_layout"], perm=[0, 3, 1, 2]))
    pre.append(helper.make_node("Sub", ["segserve_layout", "segserve_mean"], ["segserve_centered"]))
    if inp.elem_type == TensorProto.FLOAT:
        pre.append(helper.make_node("Mul", ["segserve_centered", "segserve_inv_std"], [net_in]))
    else:
        pre += [
            helper.make_node("Mul", ["segserve_centered", "segserve_inv_std"], ["segserve_norm"]),
            helper.make_node("Cast", ["segserve_norm"], [net_in], to=inp.elem_type),
        ]

    logits = net_out
    post: list[onnx.NodeProto] = []
    if out.shape[h_axis] != height or out.shape[w_axis] != width:
        # Logits at a coarser stride (or unknown): upsample to the input size before the argmax.
        consts.append(numpy_helper.from_array(np.asarray([height, width], np.int64), "segserve_hw"))
        post.append(helper.make_node("Shape", [logits], ["segserve_lshape_n"], start=0, end=1))
        parts = ["segserve_lshape_n"]
        if nhwc:
            parts += ["segserve_hw", "segserve_lshape_c"]
            post.append(helper.make_node("Shape", [logits], ["segserve_lshape_c"], start=3, end=4))
        else:
            parts += ["segserve_lshape_c", "segserve_hw"]
            post.append(helper.make_node("Shape", [logits], ["segserve_lshape_c"], start=1, end=2))
        post += [
            helper.make_node("Concat", parts, ["segserve_sizes"], axis=0),
            helper.make_node(
                "Resize",
                [logits, "", "", "segserve_sizes"],
                ["segserve_logits_up"],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            ),
        ]
        logits = "segserve_logits_up"
    post += [
        helper.make_node("ArgMax", [logits], ["segserve_argmax"], axis=c_axis, keepdims=0),
        helper.make_node("Cast", ["segserve_argmax"], [OUTPUT_NAME], to=TensorProto.UINT8),
    ]

    new_input = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [batch, height, width, 3])
    new_output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.UINT8, [batch, height, width])
    value_info = [v for v in g.value_info if v.name not in (net_in, net_out)]
    graph = helper.make_graph(
        [*pre, *g.node, *post],
        g.name or "segserve_wrapped",
        [new_input],
        [new_output],
        initializer=[*g.initializer, *consts],
        value_info=value_info,
    )
    graph.sparse_initializer.extend(g.sparse_initializer)
    wrapped = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    wrapped.functions.extend(model.functions)
    for key, value in _metadata(model).items():
        wrapped.metadata_props.add(key=key, value=value)
    return wrapped


def _to_served_names(model: onnx.ModelProto, inp: TensorSpec, out: TensorSpec) -> onnx.ModelProto:
    """A uint8 NHWC model under other names, or with int64/int32 ids: rename, and cast ids to uint8."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    if inp.name != INPUT_NAME:
        _rename_value(g, inp.name, INPUT_NAME)
    del g.output[1:]  # only the class ids are served
    if out.elem_type == TensorProto.UINT8:
        if out.name != OUTPUT_NAME:
            _rename_value(g, out.name, OUTPUT_NAME)
        return model
    _rename_value(g, out.name, "segserve_ids")
    g.node.append(helper.make_node("Cast", ["segserve_ids"], [OUTPUT_NAME], to=TensorProto.UINT8))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.UINT8, list(out.shape)))
    return model


def _label_map(model_path: Path | None, meta: dict[str, str], num_outputs: int | None) -> LabelMap:
    if model_path is not None:
        sidecar = model_path.with_suffix(".labels.json")
        if sidecar.exists():
            return LabelMap.load(sidecar)
    if "labels" in meta:
        return LabelMap.from_json(meta["labels"])
    return LabelMap.default(num_outputs or 256)


def prepare_model(
    source: str | Path | onnx.ModelProto,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    input_size: tuple[int, int] | None = None,
) -> PreparedModel:
    """Load a model and return it in the served contract, with its metadata.

    Raises ModelError when the model fits neither the served contract nor the wrappable form.
    """
    path = None
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc
    meta = _metadata(model)
    mean = mean or _triple(meta.get("mean"), IMAGENET_MEAN, "mean")
    std = std or _triple(meta.get("std"), IMAGENET_STD, "std")
    inp, out = graph_io(model)
    wrapped = False
    num_outputs: int | None = None
    if inp.elem_type == TensorProto.UINT8 and len(inp.shape) == 4 and inp.shape[3] == 3:
        if out.elem_type not in _INTEGERS or len(out.shape) != 3:
            raise ModelError(
                f"a uint8-input model must output [N, H, W] integer class ids, got "
                f"{TensorProto.DataType.Name(out.elem_type)} {list(out.shape)}"
            )
        model = _to_served_names(model, inp, out)
        height = _static(inp.shape[1], "input height", input_size[0] if input_size else None)
        width = _static(inp.shape[2], "input width", input_size[1] if input_size else None)
    else:
        num_outputs = out.shape[1] if len(out.shape) == 4 and isinstance(out.shape[1], int) else None
        model = wrap_float_model(model, mean, std, input_size)
        wrapped = True
        inp, _ = graph_io(model)
        height, width = int(inp.shape[1]), int(inp.shape[2])  # type: ignore[arg-type]
    inp, _ = graph_io(model)
    name = meta.get("name") or (path.stem if path else "model")
    metadata = ModelMetadata(
        name=name,
        version=meta.get("version") or str(model.model_version or 1),
        input_height=height,
        input_width=width,
        labels=_label_map(path, meta, num_outputs),
        dynamic_batch=not isinstance(inp.shape[0], int) or inp.shape[0] <= 0,
        wrapped=wrapped,
        mean=mean,
        std=std,
    )
    return PreparedModel(model, metadata)


def add_input_resize(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    """Put BGR->RGB and the resize to the model's input size inside the graph.

    The new input ``frames`` takes decoded BGR uint8 frames of any size (one size per batch), so the
    CPU does no pixel work before the network. Labels come out at the model's input size.
    """
    g = model.graph
    if _opset(model) < 13:
        raise ModelError("resizing in the graph needs opset 13 or newer")
    batch = graph_io(model)[0].shape[0]
    consts = [
        numpy_helper.from_array(np.asarray([height, width, 3], np.int64), "segserve_hw3"),
        numpy_helper.from_array(np.asarray([2], np.int64), "segserve_c_start"),
        numpy_helper.from_array(np.asarray([-4], np.int64), "segserve_c_end"),
        numpy_helper.from_array(np.asarray([3], np.int64), "segserve_c_axis"),
        numpy_helper.from_array(np.asarray([-1], np.int64), "segserve_c_step"),
    ]
    nodes = [
        helper.make_node("Shape", [FRAMES_NAME], ["segserve_n"], start=0, end=1),
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
