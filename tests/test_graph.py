import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import float_logits_model
from onnx import TensorProto, helper
from segserve.errors import ModelError
from segserve.graph import IMAGENET_MEAN, IMAGENET_STD, prepare_model


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
    assert not prepared.metadata.wrapped
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
    with pytest.raises(ModelError, match=r"expected float \[N, 3, H, W\]"):
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
