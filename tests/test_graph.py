import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import byo_model, float_logits_model
from onnx import TensorProto, helper
from segserve.errors import ModelError
from segserve.graph import IMAGENET_MEAN, IMAGENET_STD, ModelOptions, prepare_model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _by_hand(model: onnx.ModelProto, rgb: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """The float model run the plain way: numpy normalisation, NCHW, numpy argmax."""
    x = ((rgb.astype(np.float32) - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(
        0, 3, 1, 2
    )
    logits = _session(model).run(None, {"input": np.ascontiguousarray(x)})[0]
    return logits.argmax(axis=1).astype(np.uint8)


@pytest.fixture
def frames():
    return np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)


def test_wrapped_float_model_matches_numpy_argmax(frames):
    raw = float_logits_model(num_classes=7)
    prepared = prepare_model(raw)
    assert prepared.metadata.wrapped and prepared.metadata.dynamic_batch
    assert (prepared.metadata.input_height, prepared.metadata.input_width) == (48, 64)
    labels = _session(prepared.model).run(["labels"], {"images": frames})[0]
    assert labels.dtype == np.uint8 and labels.shape == (3, 48, 64)
    expected = _by_hand(raw, frames)
    assert np.mean(labels == expected) > 0.999  # float rounding may flip exact ties only


def test_coarse_logits_are_upsampled_before_argmax(frames):
    prepared = prepare_model(float_logits_model(num_classes=5, stride=4))
    labels = _session(prepared.model).run(["labels"], {"images": frames})[0]
    assert labels.shape == (3, 48, 64) and labels.max() < 5


def test_mean_and_std_from_metadata_are_used(frames):
    raw = float_logits_model(num_classes=4)
    raw.metadata_props.add(key="mean", value="[0, 0, 0]")
    raw.metadata_props.add(key="std", value="[255, 255, 255]")
    prepared = prepare_model(raw)
    assert prepared.metadata.mean == (0.0, 0.0, 0.0)
    labels = _session(prepared.model).run(["labels"], {"images": frames})[0]
    assert np.mean(labels == _by_hand(raw, frames, (0, 0, 0), (255, 255, 255))) > 0.999


def test_served_model_with_int64_ids_gets_a_cast():
    inp = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 8, 8, 3])
    out = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8, 8])
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["m"], axes=[3], keepdims=0),
        helper.make_node("Cast", ["m"], ["ids"], to=TensorProto.INT64),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [inp], [out]), opset_imports=[helper.make_opsetid("", 13)]
    )
    prepared = prepare_model(model)
    assert prepared.metadata.wrapped and prepared.metadata.output_kind == "ids"  # a Clip and a Cast
    frames = np.full((1, 8, 8, 3), 7, np.uint8)
    assert _session(prepared.model).run(["labels"], {"images": frames})[0].max() == 7


def test_dynamic_size_needs_an_input_size():
    raw = float_logits_model()
    for d in raw.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "H"
    with pytest.raises(ModelError, match="--input-size"):
        prepare_model(raw)
    assert prepare_model(raw, input_size=(32, 40)).metadata.input_width == 40


def test_unwrappable_models_are_explained(tmp_path):
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [inp], [out]))
    with pytest.raises(ModelError, match=r"an image input is \[N, 3, H, W\] or \[N, H, W, 3\]"):
        prepare_model(model)
    with pytest.raises(ModelError, match="not found"):
        prepare_model(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        prepare_model(tmp_path / "junk.onnx")


def test_float_model_whose_names_collide_with_the_contract(frames):
    raw = float_logits_model(num_classes=4)
    from segserve.graph import _rename_value

    _rename_value(raw.graph, "input", "images")
    _rename_value(raw.graph, "logits", "labels")
    prepared = prepare_model(raw)
    labels = _session(prepared.model).run(["labels"], {"images": frames})[0]
    assert labels.shape == (3, 48, 64) and labels.dtype == np.uint8
    assert raw.graph.input[0].name == "images"  # the caller's model is left as it was


def _nhwc_colour_model(stride: int) -> onnx.ModelProto:
    """float NHWC in, NHWC 'logits' = the pixel's own RGB (average-pooled by ``stride``)."""
    h, w = 48 // stride, 64 // stride
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 48, 64, 3])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", h, w, 3])
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["t"], ["p"], kernel_shape=[stride, stride], strides=[stride, stride]
        ),
        helper.make_node("Transpose", ["p"], ["y"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(nodes, "tf", [inp], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nhwc_float_model_with_nhwc_logits(frames):
    prepared = prepare_model(_nhwc_colour_model(1), mean=(0, 0, 0), std=(1, 1, 1))
    labels = _session(prepared.model).run(["labels"], {"images": frames})[0]
    assert np.array_equal(labels, frames.argmax(-1))  # the id is the dominant RGB channel
    coarse = prepare_model(_nhwc_colour_model(4), mean=(0, 0, 0), std=(1, 1, 1))
    assert _session(coarse.model).run(["labels"], {"images": frames})[0].shape == (3, 48, 64)


def test_served_model_under_other_names_is_renamed():
    inp = helper.make_tensor_value_info("rgb", TensorProto.UINT8, [1, 8, 8, 3])
    out = helper.make_tensor_value_info("seg", TensorProto.UINT8, [1, 8, 8])
    nodes = [helper.make_node("ReduceMax", ["rgb"], ["seg"], axes=[3], keepdims=0)]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [inp], [out]), opset_imports=[helper.make_opsetid("", 13)]
    )
    prepared = prepare_model(model)
    out = _session(prepared.model).run(["labels"], {"images": np.full((1, 8, 8, 3), 3, np.uint8)})[0]
    assert out.max() == 3 and not prepared.metadata.dynamic_batch


def _ids_model(values: list[int], elem_type: int = TensorProto.INT64) -> onnx.ModelProto:
    """uint8 NHWC in; out: ids [N, 1, 2] holding ``values`` whatever the input (the size of the input)."""
    inp = helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 1, len(values), 3])
    out = helper.make_tensor_value_info("ids", elem_type, ["N", 1, len(values)])
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[3], keepdims=0),
        helper.make_node("Cast", ["m"], ["m64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["m64", "zero"], ["z"]),
        helper.make_node("Add", ["z", "values"], ["v"]),
        helper.make_node("Cast", ["v"], ["ids"], to=elem_type),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.zeros((), np.int64), "zero"),
        onnx.numpy_helper.from_array(np.asarray(values, np.int64), "values"),
    ]
    graph = helper.make_graph(nodes, "ids", [inp], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("elem_type", [TensorProto.INT64, TensorProto.INT32, TensorProto.INT16])
def test_ids_outside_0_255_become_255_never_another_class(elem_type):
    prepared = prepare_model(_ids_model([7, -1, 300, 255, 0], elem_type))
    out = _session(prepared.model).run(["labels"], {"images": np.zeros((1, 1, 5, 3), np.uint8)})[0]
    assert out.tolist() == [[[7, 255, 255, 255, 0]]]


def test_only_the_mask_output_is_kept_and_what_fed_the_others_is_pruned(frames):
    raw = byo_model(aux=True)
    prepared = prepare_model(raw, options=ModelOptions(output="logits"))
    graph = prepared.model.graph
    assert [o.name for o in graph.output] == ["labels"]
    assert not any("aux" in name for node in graph.node for name in [*node.input, *node.output])
    assert "w_aux" not in {i.name for i in graph.initializer}
    labels = _session(prepared.model).run(["labels"], {"images": frames})[0]
    assert np.mean(labels == _by_hand(float_logits_model_like(raw), frames)) > 0.999


def float_logits_model_like(raw: onnx.ModelProto) -> onnx.ModelProto:
    """``raw`` with only its ``logits`` output, for running by hand."""
    model = onnx.ModelProto.FromString(raw.SerializeToString())
    keep = [o for o in model.graph.output if o.name == "logits"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return model


def test_a_served_model_can_be_prepared_again_with_new_choices(tmp_path, frames):
    """The wrapper's own names never collide with a model that already holds a wrapper."""
    served = prepare_model(float_logits_model(num_classes=5)).model
    again = prepare_model(served)
    assert np.array_equal(
        _session(again.model).run(["labels"], {"images": frames})[0],
        _session(served).run(["labels"], {"images": frames})[0],
    )
    flipped = prepare_model(served, options=ModelOptions(channel_order="bgr"))
    out = _session(flipped.model).run(["labels"], {"images": frames})[0]
    expected = _session(served).run(["labels"], {"images": np.ascontiguousarray(frames[..., ::-1])})[0]
    assert np.array_equal(out, expected)


def test_the_served_file_records_the_normalisation_it_bakes_in():
    bgr = byo_model(metadata={"channel_order": "bgr", "mean": "[104, 117, 123]", "std": "[1, 2, 4]"})
    served = prepare_model(bgr, options=ModelOptions(input_range="0..255"))
    meta = {p.key: p.value for p in served.model.metadata_props}
    assert "channel_order" not in meta  # the served input is RGB
    assert json.loads(meta["mean"]) == [123, 117, 104] and json.loads(meta["std"]) == [4, 2, 1]
    assert served.metadata.channel_order == "bgr" and served.metadata.mean == (104, 117, 123)


def test_old_opsets_are_converted_before_wrapping(frames):
    raw = byo_model(opset=11, stride=4)
    prepared = prepare_model(raw)
    assert max(o.version for o in prepared.model.opset_import if o.domain in ("", "ai.onnx")) == 13
    labels = _session(prepared.model).run(["labels"], {"images": frames})[0]
    assert labels.shape == (3, 48, 64)


def test_resize_in_graph_on_an_opset_13_model(frames):
    from segserve.graph import add_input_resize

    served = prepare_model(byo_model(opset=13)).model
    resized = add_input_resize(served, 48, 64)
    big = np.repeat(np.repeat(frames[:1, :, :, ::-1], 2, axis=1), 2, axis=2)  # BGR at twice the size
    assert _session(resized).run(["labels"], {"frames": np.ascontiguousarray(big)})[0].shape == (1, 48, 64)
