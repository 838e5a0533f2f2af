"""What modelform decides for each form, where each value comes from, and the errors for the rest:
each names what was found and the flag that settles it, and nothing ambiguous is guessed."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from modelgen import byo_model
from onnx import TensorProto, helper
from segserve.errors import ModelError
from segserve.labels import LabelMap
from segserve.modelform import IDS, SCORES, ModelOptions, TensorSpec, analyse, read_output


def _model(inputs: list, outputs: list, opset: int = 17) -> onnx.ModelProto:
    """A graph with the given inputs and outputs, for checks that read shapes and never run it."""
    nodes = [helper.make_node("Identity", [inputs[0].name], [o.name]) for o in outputs]
    graph = helper.make_graph(nodes, "shapes", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _input(shape: list, elem_type: int = TensorProto.FLOAT, name: str = "x"):
    return helper.make_tensor_value_info(name, elem_type, shape)


def _output(name: str, shape: list, elem_type: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem_type, shape)


# --- outputs -------------------------------------------------------------------------------------


def test_int32_n1hw_is_read_as_ids_never_as_one_class_scores() -> None:
    form = analyse(byo_model(output="ids32"))
    assert form.output.kind == IDS and form.output.axis == 1 and form.output.spec.name == "ids"


def test_int64_nhw_ids_and_low_res_ids_are_resized_nearest() -> None:
    form = analyse(byo_model(output="ids64", stride=4))
    assert form.output.kind == IDS and form.output.axis is None
    assert form.output.size == (12, 16) and "nearest" in form.output.reason


def test_low_res_scores_are_resized_linear_and_count_classes() -> None:
    form = analyse(byo_model(stride=8, num_classes=19))
    assert form.output.kind == SCORES and form.output.classes == 19 and "linear" in form.output.reason


def test_one_float_channel_is_ambiguous_and_refused() -> None:
    model = _model([_input(["N", 3, 48, 64])], [_output("prob", ["N", 1, 48, 64])])
    with pytest.raises(
        ModelError, match=r"no output can be the mask.*'prob' float32 \[N, 1, 48, 64\].*ambiguous"
    ):
        analyse(model)


def test_two_mask_like_outputs_need_output_and_the_error_lists_them() -> None:
    model = byo_model(aux=True)
    with pytest.raises(ModelError, match=r"2 outputs could be the mask \('aux', 'logits'\).*--output NAME"):
        analyse(model)
    assert analyse(model, ModelOptions(output="logits")).output_choice == "flag --output"
    model.metadata_props.add(key="output", value="aux")
    chosen = analyse(model)
    assert chosen.output.spec.name == "aux" and chosen.output_choice == "metadata 'output'"


def test_output_flag_naming_nothing_or_something_unusable_is_explained() -> None:
    with pytest.raises(
        ModelError, match=r"flag --output names 'nope', which the model does not output.*'logits'"
    ):
        analyse(byo_model(), ModelOptions(output="nope"))
    model = _model(
        [_input(["N", 3, 48, 64])], [_output("logits", ["N", 5, 48, 64]), _output("feat", ["N", 256])]
    )
    with pytest.raises(ModelError, match=r"output 'feat' float32 \[N, 256\] cannot be the mask"):
        analyse(model, ModelOptions(output="feat"))
    assert analyse(model).output.spec.name == "logits"  # the only mask-like one


def test_side_outputs_of_other_shapes_are_not_candidates() -> None:
    spec = TensorSpec("boxes", TensorProto.INT64, ("N", 5, 4))
    assert read_output(spec, "nchw", 48, 64).kind is None  # 5x4 is not the shape of the 48x64 input
    quantised = TensorSpec("q", TensorProto.INT8, ("N", 19, 48, 64))
    assert "quantised" in read_output(quantised, "nchw", 48, 64).reason
    many = TensorSpec("s", TensorProto.FLOAT, ("N", 300, 48, 64))
    assert "at most 256" in read_output(many, "nchw", 48, 64).reason


def test_nhwc_scores_from_an_nchw_input_are_read_by_their_shape() -> None:
    spec = TensorSpec("s", TensorProto.FLOAT, ("N", 12, 16, 19))
    form = read_output(spec, "nchw", 48, 64)
    assert form.kind == SCORES and form.axis == 3 and form.classes == 19


# --- inputs --------------------------------------------------------------------------------------


def test_layout_comes_from_the_shape_or_must_be_given() -> None:
    assert analyse(byo_model(layout="nhwc")).input.layout.value == "nhwc"
    assert analyse(byo_model()).input.layout.source == "model shape"
    open_shape = _model([_input(["N", "C", "H", "W"])], [_output("y", ["N", 5, "H", "W"])])
    with pytest.raises(ModelError, match=r"could be NCHW or NHWC: give --layout nchw or --layout nhwc"):
        analyse(open_shape, ModelOptions(input_size=(48, 64)))
    form = analyse(open_shape, ModelOptions(input_size=(48, 64), layout="nchw"))
    assert form.input.layout.source == "flag --layout" and form.input.size.value == (48, 64)
    with pytest.raises(ModelError, match="then has 64 channels"):
        analyse(byo_model(), ModelOptions(layout="nhwc"))


def test_inputs_that_are_not_images_are_explained_with_what_was_found() -> None:
    flat = _model([_input([1, 10])], [_output("y", [1, 10])])
    with pytest.raises(
        ModelError, match=r"has 2 dimensions.*found inputs: 'x' float32 \[1, 10\]; outputs: 'y'"
    ):
        analyse(flat)
    ints = _model([_input(["N", 3, 48, 64], TensorProto.INT32)], [_output("y", ["N", 5, 48, 64])])
    with pytest.raises(ModelError, match="uint8 pixels or float32/float16/float64 values, not int32"):
        analyse(ints)
    two = byo_model()
    two.graph.input.append(_input([1], name="scale"))
    with pytest.raises(ModelError, match=r"exactly one image input, it has 2.*'input'.*'scale'"):
        analyse(two)
    not_rgb = _model([_input(["N", 1, 48, 64])], [_output("y", ["N", 5, 48, 64])])
    with pytest.raises(ModelError, match="not a 3-channel image"):
        analyse(not_rgb)


def test_dynamic_size_needs_input_size_and_a_static_one_must_agree() -> None:
    dynamic = _model([_input(["N", 3, "H", "W"])], [_output("y", ["N", 5, "H", "W"])])
    with pytest.raises(ModelError, match="give the size to serve at with --input-size WxH"):
        analyse(dynamic)
    assert analyse(dynamic, ModelOptions(input_size=(32, 40))).input.size.source == "flag --input-size"
    with pytest.raises(ModelError, match="disagrees with the model's static input height 48"):
        analyse(byo_model(), ModelOptions(input_size=(32, 64)))


def test_static_and_dynamic_batch() -> None:
    assert analyse(byo_model(batch=4)).input.static_batch == 4
    assert analyse(byo_model()).input.static_batch is None


# --- channel order, range, mean, std ----------------------------------------------------------------


def test_flags_win_over_metadata_which_wins_over_defaults() -> None:
    meta = {
        "channel_order": "bgr",
        "input_range": "0..1",
        "mean": "[0.4, 0.45, 0.5]",
        "std": "[0.2, 0.2, 0.2]",
    }
    model = byo_model(metadata=meta)
    inp = analyse(model).input
    assert (inp.channel_order.value, inp.channel_order.source) == ("bgr", "metadata 'channel_order'")
    assert (inp.input_range.value, inp.mean.value) == ("0..1", (0.4, 0.45, 0.5))
    assert inp.std.source == "metadata 'std'"
    flagged = analyse(model, ModelOptions(channel_order="rgb", mean=(1.0, 2.0, 3.0))).input
    assert flagged.channel_order.source == "flag --channel-order" and flagged.mean.source == "flag --mean"
    plain = analyse(byo_model()).input
    assert plain.channel_order.source == "default" and plain.mean.source.startswith("default (ImageNet")


def test_default_imagenet_values_follow_the_channel_order_and_range() -> None:
    bgr = analyse(byo_model(), ModelOptions(channel_order="bgr")).input
    assert bgr.mean.value == (103.53, 116.28, 123.675)
    unit = analyse(byo_model(), ModelOptions(input_range="0..1")).input
    assert unit.mean.value == pytest.approx((0.485, 0.456, 0.406), abs=1e-6)


def test_pixel_mean_std_for_each_published_convention() -> None:
    def pixel(**kw):
        return analyse(byo_model(), ModelOptions(**kw)).input.pixel_mean_std()

    # torchvision: (p / 255 - m) / s == (p - 255 m) / (255 s)
    mean, std = pixel(input_range="0..1", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert mean == pytest.approx((123.675, 116.28, 103.53)) and std == pytest.approx((58.395, 57.12, 57.375))
    # ESPNet: (p - M) / S / 255, M and S in pixel units
    mean, std = pixel(input_range="0..1", mean=(72.39, 82.91, 73.16), std=(45.3, 46.2, 44.9))
    assert mean == (72.39, 82.91, 73.16) and std == pytest.approx((45.3 * 255, 46.2 * 255, 44.9 * 255))
    # Caffe: (p - M) / 1
    assert pixel(mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0)) == ((104.0, 117.0, 123.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ModelOptions(channel_order="grb"), r"flag --channel-order is 'grb'; expected one of rgb, bgr"),
        (ModelOptions(input_range="0..100"), r"flag --input-range is '0..100'; expected one of 0..1, 0..255"),
        (ModelOptions(mean=(0.485, 0.456, 0.406)), r"looks like 0..1 units.*give --input-range 0..1"),
        (ModelOptions(std=(1.0, 0.0, 1.0)), r"std \[1.0, 0.0, 1.0\] \(flag --std\) must be positive"),
        (ModelOptions(layout="chw"), r"flag --layout is 'chw'"),
    ],
)
def test_bad_choices_are_one_line_errors(options: ModelOptions, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        analyse(byo_model(), options)


def test_bad_metadata_names_its_key() -> None:
    with pytest.raises(ModelError, match=r"metadata 'channel_order' is 'BRG'"):
        analyse(byo_model(metadata={"channel_order": "BRG"}))
    with pytest.raises(ModelError, match=r"metadata 'mean' must be a JSON list of 3 numbers"):
        analyse(byo_model(metadata={"mean": "1 2 3"}))


def test_uint8_models_normalise_themselves_and_flags_for_it_are_noted() -> None:
    form = analyse(byo_model(elem_type=TensorProto.UINT8), ModelOptions(mean=(1.0, 2.0, 3.0)))
    assert not form.input.normalises and form.input.input_range is None
    assert any("ignored" in note for note in form.notes)


# --- labels --------------------------------------------------------------------------------------


def test_label_map_sources_in_order(tmp_path: Path) -> None:
    model = byo_model(num_classes=3, metadata={"labels": json.dumps(["road", "sky", "car"])})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    form = analyse(model, path=path)
    assert form.labels.source == "metadata 'labels'" and form.labels.value.names[2] == "car"
    LabelMap.default(3).save(tmp_path / "m.labels.json")
    assert "beside the model" in analyse(model, path=path).labels.source
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    flagged = analyse(model, ModelOptions(labels=str(names)), path)
    assert flagged.labels.source == f"flag --labels (file {names})" and flagged.labels.value.names[1] == "b"
    built_in = analyse(byo_model(num_classes=19, metadata={"labels": "cityscapes"}))
    assert built_in.labels.source == "metadata 'labels' (built-in cityscapes)" and not built_in.notes


def test_label_map_and_class_count_disagreeing_is_noted() -> None:
    form = analyse(byo_model(num_classes=21), ModelOptions(labels="cityscapes"))
    assert any("names none for ids [19, 20]" in note for note in form.notes)
    form = analyse(byo_model(num_classes=5), ModelOptions(labels="cityscapes"))
    assert any("never produce" in note for note in form.notes)


def test_bad_label_maps_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="neither a file nor a built-in map"):
        analyse(byo_model(), ModelOptions(labels="ade20k"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ModelError, match="JSON list of class names"):
        analyse(byo_model(), ModelOptions(labels=str(bad)))
