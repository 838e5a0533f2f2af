from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from segserve.labels import LabelMap, mask_to_training_rgb
from segserve.train.cli import main
from segserve.train.dataset import (
    check_split,
    colour_lut,
    colour_to_mask,
    convert_split,
    find_label_map,
    load_split,
    load_splits,
    pair_files,
    read_mask,
    sequence_of,
)


def test_fixture_split_is_valid(camvid: Path) -> None:
    rep = check_split(camvid / "train")
    assert rep.ok, rep.problems
    assert rep.num_pairs == 6
    assert rep.sizes == {(360, 480): 6}
    assert rep.histogram[1:12].sum() > 0 and rep.histogram[12:].sum() == 0
    text = rep.format(LabelMap.load(camvid / "classes.json"))
    assert "road" in text and "OK" in text


def test_load_split(camvid: Path) -> None:
    images, masks = load_split(camvid / "val")
    assert images.shape == (2, 360, 480, 3) and images.dtype == np.uint8
    assert masks.shape == (2, 360, 480) and masks.max() <= 11


def test_a_held_out_sequence_is_kept_apart(camvid: Path) -> None:
    """Frames of a held-out sequence are never in the training frames, wherever they lie."""
    splits = [camvid / "train", camvid / "val"]
    assert sequence_of("0006R0_f03480") == "0006R0" and sequence_of("frame7") == "frame7"
    trained, _ = load_splits(splits, ["0006R0"], exclude=True)
    held, held_masks = load_splits(splits, ["0006R0"])
    assert len(trained) == 6 and len(held) == 2 and held_masks.shape == (2, 360, 480)
    every, _ = load_splits(splits)
    assert len(every) == 8
    wanted = {tuple(f.ravel()[:64]) for f in held}
    assert not wanted & {tuple(f.ravel()[:64]) for f in trained}


def _broken_copy(camvid: Path, tmp_path: Path) -> Path:
    split = tmp_path / "split"
    shutil.copytree(camvid / "train", split)
    shutil.copy(camvid / "classes.json", split / "classes.json")
    labels = sorted((split / "labels").iterdir())
    # unknown value 40
    m = read_mask(labels[0])
    m[:10, :10] = 40
    cv2.imwrite(str(labels[0]), mask_to_training_rgb(m))
    # non-grey pixels
    rgb = cv2.imread(str(labels[1]))
    rgb[5, 5] = (1, 2, 3)
    cv2.imwrite(str(labels[1]), rgb)
    # size mismatch
    cv2.imwrite(str(labels[2]), mask_to_training_rgb(np.zeros((100, 100), np.uint8)))
    # missing pairs
    labels[3].unlink()
    cv2.imwrite(str(split / "labels" / "orphan.png"), mask_to_training_rgb(np.zeros((360, 480), np.uint8)))
    return split


def test_check_reports_problems(camvid: Path, tmp_path: Path) -> None:
    split = _broken_copy(camvid, tmp_path)
    rep = check_split(split)
    text = "\n".join(rep.problems)
    assert not rep.ok
    assert "unknown label values [40]" in text
    assert "not grey" in text
    assert "!= label 100x100" in text
    assert "image without label" in text
    assert "orphan: label without image" in text


def test_check_cli_exit_codes(camvid: Path, tmp_path: Path, capsys) -> None:
    assert main(["dataset", "check", str(camvid / "train"), str(camvid / "val")]) == 0
    assert "class histogram" in capsys.readouterr().out
    assert main(["dataset", "check", str(_broken_copy(camvid, tmp_path))]) == 1


def test_colour_to_mask_round_trip(camvid: Path) -> None:
    lm = LabelMap.load(camvid / "classes.json")
    mask = read_mask(next((camvid / "val" / "labels").iterdir()))
    rgb = cv2.cvtColor(lm.colorize(mask), cv2.COLOR_BGR2RGB)
    rgb[0, 0] = (1, 2, 3)  # a colour not in the map
    back, unmapped = colour_to_mask(rgb, colour_lut(lm))
    assert unmapped == 1 and back[0, 0] == 0
    back[0, 0] = mask[0, 0]
    assert np.array_equal(back, mask)


def test_convert_cli(camvid: Path, tmp_path: Path) -> None:
    lm = LabelMap.load(camvid / "classes.json")
    colour_dir = tmp_path / "colour"
    colour_dir.mkdir()
    originals = {}
    for p in pair_files(camvid / "train").pairs:
        originals[p.name] = read_mask(p.label)
        cv2.imwrite(str(colour_dir / f"{p.name}.png"), lm.colorize(originals[p.name]))
    out = tmp_path / "converted"
    rc = main(
        [
            "dataset", "convert", "--images", str(camvid / "train" / "images"), "--labels", str(colour_dir),
            "--classes", str(camvid / "classes.json"), "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    assert find_label_map(out) == out / "classes.json"
    for p in pair_files(out).pairs:
        assert np.array_equal(read_mask(p.label), originals[p.name])
    half = convert_split(camvid / "train" / "images", colour_dir, lm, tmp_path / "half", size=(240, 180))
    assert half.written == 6
    assert check_split(tmp_path / "half").sizes == {(180, 240): 6}
