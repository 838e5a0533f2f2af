"""The ``dataset``, ``train``, ``export`` and ``eval`` subcommands of ``segserve``.

``register(subparsers)`` adds them to the main CLI. Torch is imported only by ``train`` and
``export``; ``dataset`` and ``eval`` run without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from segserve import options as o
from segserve.options import Option, Size
from segserve.settings import SHIPPED_MODEL


def _scale(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected LOW,HIGH, e.g. 0.5,2.0, got {text!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return low, high


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object, e.g. '{{\"head\": 64}}': {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, e.g. '{{\"head\": 64}}', got {text!r}")
    norm = value.get("input_norm", "fixed")
    if norm not in ("fixed", "image"):
        raise ValueError(
            f"input_norm is 'fixed' (the dataset's mean and std) or 'image' (per frame), not {norm!r}"
        )
    return value


def _split(text: str) -> Path:
    """A split folder: images/ and labels/ with the same stems (``segserve dataset check`` says more)."""
    folder = o.existing_dir(text)
    for part in ("images", "labels"):
        if not (folder / part).is_dir():
            raise ValueError(
                f"{text} has no {part}/ folder: a split folder holds images/ and labels/ with the same "
                "stems; segserve dataset convert makes one"
            )
    return folder


def _training_splits(text: str) -> list[Path]:
    """DIR[,DIR...]: the first one's label map (in it or its parent) is the run's."""
    from segserve.train.dataset import LABEL_MAP_NAME, find_label_map

    folders = [_split(part.strip()) for part in text.split(",") if part.strip()]
    if not folders:
        raise ValueError("expected DIR[,DIR...], e.g. camvid/train,camvid/val")
    if find_label_map(folders[0]) is None:
        raise ValueError(
            f"no {LABEL_MAP_NAME} in {folders[0]} or its parent: put the label map (id, name, colour of "
            "each class) there; segserve dataset convert writes one"
        )
    return folders


def _fraction(text: str) -> float:
    value = o.number(0)(text)
    if value > 1:
        raise ValueError(f"expected a share from 0 to 1, got {text!r}")
    return value


def _ema_decay(text: str) -> float:
    value = o.number(0)(text)
    if value >= 1:
        raise ValueError(f"expected a decay from 0 up to (not including) 1, e.g. 0.999, got {text!r}")
    return value


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("expected NAME[,NAME...], e.g. 0006R0")
    return names


# --- dataset --------------------------------------------------------------------------------------
def cmd_dataset_check(args: argparse.Namespace) -> int:
    from segserve.labels import LabelMap
    from segserve.train.dataset import check_split

    label_map = LabelMap.load(args.classes) if args.classes else None
    status = 0
    for d in args.dirs:
        rep = check_split(d, label_map)
        if label_map is None:
            from segserve.train.dataset import find_label_map

            found = find_label_map(d)
            lm = LabelMap.load(found) if found else None
        else:
            lm = label_map
        print(rep.format(lm))
        status = status or (0 if rep.ok else 1)
    return status


def cmd_dataset_convert(args: argparse.Namespace) -> int:
    from segserve.labels import LabelMap
    from segserve.train.dataset import check_split, convert_split

    label_map = LabelMap.load(args.classes)
    size = (args.size.width, args.size.height) if args.size else None
    stats = convert_split(args.images, args.labels, label_map, args.out, size=size, unmapped=args.unmapped)
    print(f"wrote {stats.written} pairs to {args.out}; {stats.unmapped_pixels} pixels of unmapped colours")
    for s in stats.skipped:
        print(f"  skipped {s}")
    rep = check_split(args.out, label_map)
    print(rep.format(label_map))
    return 0 if stats.written and rep.ok else 1


# --- train / export / eval ------------------------------------------------------------------------
DEFAULT_MAX_MINUTES = 75.0


def training_minutes(max_minutes: float | None, max_steps: int) -> float:
    """The time budget: as given; else none when a step budget is set (a step schedule must not be
    cut short, or compressed, by the wall time a paused or busy process spends), else the default."""
    if max_minutes is not None:
        return max_minutes
    return math.inf if max_steps else DEFAULT_MAX_MINUTES


def cmd_train(args: argparse.Namespace) -> int:
    from segserve.train.loop import TrainConfig, Trainer

    model = args.model_config or {}
    cfg = TrainConfig(
        data=[str(d) for d in args.data],
        val=str(args.val) if args.val else None,
        holdout=args.holdout or [],
        name=args.name,
        runs_dir=args.runs_dir,
        max_minutes=training_minutes(args.max_minutes, args.max_steps),
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        batch=args.batch,
        crop=args.crop.hw,
        scale=args.scale,
        lr=args.lr,
        loss=args.loss,
        class_weight_power=args.class_weight_power,
        val_every=args.val_every,
        augment=args.augment,
        rare_p=args.rare_crops,
        ema=args.ema,
        class_mix=args.class_mix,
        seed=args.seed,
        threads=args.threads,
        model=model,
    )
    trainer = Trainer(cfg, resume=args.resume)
    last = trainer.run()
    print(f"done: {json.dumps(last)}; best val mIoU {trainer.best:.4f}; checkpoints in {trainer.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from segserve.train.export import export_checkpoint

    report = export_checkpoint(
        args.checkpoint,
        args.out or Path(f"{args.name}.onnx"),
        name=args.name,
        version=args.version,
        check_dir=args.check_data,
        calibrate_dir=args.calibrate_on,
        calibrate_on_training=args.calibrate,
    )
    height, width = report["input_size"]
    print(json.dumps({**report, "input_size": str(Size(width, height))}, indent=1))
    return 0 if report.get("parity_ok", True) else 1


def cmd_eval(args: argparse.Namespace) -> int:
    from segserve.train.evaluate import evaluate_onnx

    report = evaluate_onnx(
        args.model,
        args.data,
        args.out,
        num_pictures=args.pictures,
        threads=args.threads,
        sequences=args.sequences or (),
    )
    print(f"mIoU {report['miou']:.4f}  pixel accuracy {report['pixel_accuracy']:.4f}")
    for name, iou in report["per_class_iou"].items():
        print(f"  {name:<16} {iou if iou is None else round(iou, 4)}")
    print(f"report and pictures in {args.out}")
    return 0


# --- registration ---------------------------------------------------------------------------------
def _opt(flag: str, help: str, default=None, parse=o.text, **kwargs) -> Option:
    """A train/dataset/export/eval option: no environment variable (they are one-off commands)."""
    return Option(flag, help, default, parse, env=None, **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dataset {check,convert}``, ``train``, ``export`` and ``eval`` to the main CLI."""
    ds = subparsers.add_parser("dataset", help="check or convert training data")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True, metavar="COMMAND")
    chk = ds_sub.add_parser("check", help="validate images/ + labels/ (k,k,k) pairs against classes.json")
    chk.add_argument("dirs", nargs="+", metavar="DIR", help="split folder(s) with images/ and labels/")
    o.add_options(
        chk,
        [
            _opt(
                "--classes", "label map JSON", None, o.existing_file, shown="DIR/classes.json or its parent's"
            )
        ],
    )
    chk.set_defaults(func=cmd_dataset_check)
    cv = ds_sub.add_parser("convert", help="colour-coded label images + colour map -> training format")
    o.add_options(
        cv,
        [
            _opt("--images", "folder of frames", None, o.existing_dir, required=True, metavar="DIR"),
            _opt(
                "--labels",
                "folder of colour-coded label images with the frames' stems",
                None,
                o.existing_dir,
                required=True,
                metavar="DIR",
            ),
            _opt(
                "--classes",
                "label map JSON whose colours code the labels",
                None,
                o.existing_file,
                required=True,
                metavar="PATH",
            ),
            _opt("--out", "output split folder", None, o.path, required=True, metavar="DIR"),
            _opt(
                "--size",
                "resize frames and labels to WxH, e.g. 480x360",
                None,
                o.size,
                shown="keep",
                metavar="WxH",
            ),
            _opt("--unmapped", "class id for colours not in the map", 0, o.integer(0, 255)),
        ],
    )
    cv.set_defaults(func=cmd_dataset_convert)

    tr = subparsers.add_parser("train", help="train the real-time network (needs the train extra)")
    o.add_options(
        tr,
        [
            _opt(
                "--data",
                "split folder(s) to train on, comma-separated: images/, labels/, classes.json in the "
                "first or its parent",
                None,
                _training_splits,
                required=True,
                metavar="DIR[,DIR]",
            ),
            _opt(
                "--holdout",
                "sequence(s) kept out of training and used to pick the best checkpoint "
                "(frame NAME = SEQUENCE_FRAME); replaces --val",
                None,
                _names,
                shown="none",
                metavar="SEQ[,SEQ]",
            ),
            _opt(
                "--val",
                "val split folder: mIoU every --val-every epochs, best kept",
                None,
                _split,
                metavar="DIR",
            ),
            _opt("--name", "run name: checkpoints in RUNS_DIR/NAME/", "camvid"),
            _opt("--runs-dir", "folder for the runs", Path("runs"), o.path, metavar="RUNS_DIR"),
            _opt(
                "--max-minutes",
                "time budget; the learning-rate schedule follows it",
                None,
                o.number(0, above=True),
                shown=f"{DEFAULT_MAX_MINUTES:g}, or none with --max-steps",
            ),
            _opt("--epochs", "epoch budget (whichever budget ends first)", 10_000, o.integer(1)),
            _opt(
                "--max-steps",
                "step budget (a budget that pausing the process does not spend); 0 = none",
                0,
                o.integer(0),
            ),
            _opt("--batch", "frames per training step", 8, o.integer(1)),
            _opt("--crop", "training crop WxH", Size(384, 288), o.size, metavar="WxH"),
            _opt(
                "--scale",
                "random scale range LOW,HIGH",
                (0.5, 2.0),
                _scale,
                shown="0.5,2.0",
                metavar="LOW,HIGH",
            ),
            _opt("--lr", "peak learning rate (AdamW)", 4e-3, o.number(0, above=True)),
            _opt(
                "--loss",
                "ohem (online hard-example mining) or ce (cross-entropy)",
                "ohem",
                o.choice("ohem", "ce"),
            ),
            _opt(
                "--class-weight-power",
                "class weights = (median freq / freq) ** POWER; 0 = unweighted",
                0.5,
                o.number(0),
            ),
            _opt("--val-every", "epochs between val mIoU checks", 2, o.integer(1)),
            _opt(
                "--augment",
                "basic (colour jitter) or strong (also hue, gamma, blur, noise, JPEG re-compression)",
                "basic",
                o.choice("basic", "strong"),
            ),
            _opt(
                "--rare-crops",
                "share of crops placed around a pixel of a rare class (pole, sign, ...)",
                0.0,
                _fraction,
            ),
            _opt(
                "--class-mix",
                "share of crops that get half the classes of another crop pasted on (ClassMix)",
                0.0,
                _fraction,
            ),
            _opt(
                "--ema",
                "decay of the weight average evaluated, kept and exported (e.g. 0.999); 0 = off",
                0.0,
                _ema_decay,
            ),
            _opt("--seed", "random seed (augmentation, initialisation)", 0, o.integer(0)),
            _opt("--threads", "torch CPU threads", 2, o.integer(1)),
            _opt(
                "--model-config",
                "JSON object overriding ModelConfig widths, e.g. '{\"head\": 64}'",
                None,
                _json_object,
                shown="the default network",
                metavar="JSON",
            ),
        ],
    )
    tr.add_argument("--resume", action="store_true", help="continue RUNS_DIR/NAME/last.pt (default: off)")
    tr.set_defaults(func=cmd_train)

    ex = subparsers.add_parser("export", help="checkpoint -> served ONNX (uint8 NHWC in, uint8 labels out)")
    o.add_options(
        ex,
        [
            _opt(
                "--checkpoint",
                "a checkpoint segserve train wrote, e.g. runs/NAME/best.pt",
                None,
                o.existing_file,
                required=True,
                metavar="PATH",
            ),
            _opt(
                "--out",
                "ONNX file to write (its .labels.json goes beside it)",
                None,
                o.path,
                shown="NAME.onnx",
            ),
            _opt("--name", "model name in the metadata (GetModelInfo)", "segserve-camvid"),
            _opt("--version", "model version in the metadata", "1"),
            _opt(
                "--check-data",
                "split folder of real frames for the torch/ONNX parity check",
                None,
                _split,
                shown="no check",
                metavar="DIR",
            ),
            _opt(
                "--calibrate-on",
                "fit per-class logit offsets on this (training) split and fold them into the model",
                None,
                _split,
                shown="no calibration",
                metavar="DIR",
            ),
        ],
    )
    ex.add_argument(
        "--calibrate",
        action="store_true",
        help="fit the offsets on the frames the checkpoint trained on, held-out sequences left out "
        "(default: off)",
    )
    ex.set_defaults(func=cmd_export)

    ev = subparsers.add_parser(
        "eval", help="mIoU, per-class IoU, confusion matrix and pictures of an ONNX model"
    )
    o.add_options(
        ev,
        [
            Option(
                "--model",
                "served ONNX model to evaluate",
                SHIPPED_MODEL,
                o.existing_file,
                shown="the shipped segserve-camvid model",
                metavar="PATH",
            ),
            _opt(
                "--data", "split folder with images/ and labels/", None, _split, required=True, metavar="DIR"
            ),
            _opt("--out", "folder for report.json and PNGs", Path("eval-output"), o.path, metavar="DIR"),
            _opt(
                "--sequences",
                "only the frames of these sequences (e.g. the one held out in training)",
                None,
                _names,
                shown="all frames",
                metavar="SEQ[,SEQ]",
            ),
            _opt("--pictures", "side-by-side pictures to write", 4, o.integer(0)),
            _opt("--threads", "onnxruntime threads", 2, o.integer(1)),
        ],
    )
    ev.set_defaults(func=cmd_eval)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m segserve.train.cli``) for when the main CLI is not at hand."""
    parser = o.Parser(prog="segserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = o.resolve_env(parser.parse_args(argv))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
