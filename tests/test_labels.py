import json

import numpy as np
import pytest
from segserve.labels import (
    LabelMap,
    LabelMapError,
    load_label_spec,
    mask_to_training_rgb,
    parse_label_text,
    training_rgb_to_mask,
)

CAMVID = {
    "classes": [
        {"id": 0, "name": "background", "color": [0, 0, 0]},
        {"id": 1, "name": "sky", "color": [128, 128, 128]},
        {"id": 4, "name": "road", "color": [128, 64, 128]},
    ]
}


def test_json_round_trip(tmp_path):
    labels = LabelMap.from_dict(CAMVID)
    path = tmp_path / "m.json"
    labels.save(path)
    assert LabelMap.load(path) == labels
    assert json.loads(path.read_text()) == CAMVID
    assert labels.num_classes == 5 and labels.names[4] == "road"


def test_colorize_uses_the_mapping_colours_in_bgr():
    labels = LabelMap.from_dict(CAMVID)
    mask = np.array([[0, 1], [4, 200]], np.uint8)
    colour = labels.colorize(mask)
    assert colour.shape == (2, 2, 3)
    assert colour[0, 1].tolist() == [128, 128, 128]
    assert colour[1, 0].tolist() == [128, 64, 128][::-1]
    assert colour[1, 1].tolist() == [0, 0, 0]  # unknown id drawn black


def test_training_format_round_trip():
    mask = np.random.default_rng(0).integers(0, 12, (7, 9), dtype=np.uint8)
    rgb = mask_to_training_rgb(mask)
    assert rgb.shape == (7, 9, 3) and (rgb[..., 2] == mask).all()
    assert np.array_equal(training_rgb_to_mask(rgb), mask)


def test_training_format_rejects_colour_pixels():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(ValueError, match="1 pixels are not grey"):
        training_rgb_to_mask(rgb)


@pytest.mark.parametrize(
    "bad",
    [
        {"classes": []},
        {"classes": [{"id": 1, "name": "a", "color": [0, 0, 0]}, {"id": 1, "name": "b", "color": [0, 0, 0]}]},
        {"classes": [{"id": 300, "name": "a", "color": [0, 0, 0]}]},
        {"classes": [{"id": 1, "name": "a", "color": [0, 0]}]},
        {"nope": 1},
    ],
)
def test_invalid_maps_are_rejected(bad):
    with pytest.raises(LabelMapError):
        LabelMap.from_dict(bad)


def test_default_map_has_distinct_colours():
    labels = LabelMap.default(12)
    assert len({c.color for c in labels.classes}) == 12


def test_cityscapes_is_built_in_with_the_19_train_ids():
    labels, source = load_label_spec("cityscapes")
    assert source == "built-in cityscapes" and len(labels) == 19
    assert labels.names[0] == "road" and labels.names[10] == "sky" and labels.names[18] == "bicycle"
    assert labels.classes[0].color == (128, 64, 128) and labels.classes[13].color == (0, 0, 142)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("road\nsky\ncar\n", ["road", "sky", "car"]),
        ('["road", "sky", "car"]', ["road", "sky", "car"]),
        (json.dumps(CAMVID), ["background", "sky", "road"]),
    ],
)
def test_label_files_as_names_a_line_json_names_or_the_map(tmp_path, text, names):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    labels, source = load_label_spec(str(path))
    assert [c.name for c in labels.classes] == names and source == f"file {path}"


def test_a_list_of_names_gets_ids_in_order_and_distinct_palette_colours():
    labels = LabelMap.from_names(["a", "b", "c", "d"])
    assert [c.id for c in labels.classes] == [0, 1, 2, 3]
    assert [c.color for c in labels.classes] == [c.color for c in LabelMap.default(4).classes]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("road\n\nsky", "blank line"),
        ("[1, 2]", "JSON list of class names"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_label_texts_are_explained(text, message):
    with pytest.raises(LabelMapError, match=message):
        parse_label_text(text)


def test_unknown_spec_names_the_built_in_maps(tmp_path):
    with pytest.raises(LabelMapError, match=r"neither a file nor a built-in map \(cityscapes\)"):
        load_label_spec(str(tmp_path / "missing.json"))
