"""The ``dataset``, ``train``, ``export`` and ``eval`` subcommands of ``segserve``.

``register(subparsers)`` adds them to the main CLI. Torch is imported only by ``train`` and
``export``; ``dataset`` and ``eval`` run without it.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_MODEL = "models/segserve-camvid.onnx"


def _pair(text: str, sep: str = "x") -> tuple[int, int]:
    a, b = text.lower().split(sep)
    return int(a), int(b)


def _floats(text: str) -> tuple[float, float]:
    a, b = text.split(",")
    return float(a), float(b)


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
    size = _pair(args.size) if args.size else None
    stats = convert_split(args.images, args.labels, label_map, args.out, size=size, unmapped=args.unmapped)
    print(f"wrote {stats.written} pairs to {args.out}; {stats.unmapped_pixels} pixels of unmapped colours")
    for s in stats.skipped:
        print(f"  skipped {s}")
    rep = check_split(args.out, label_map)
    print(rep.format(label_map))
    return 0 if stats.written and rep.ok else 1


# --- train / export / eval ------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from segserve.train.loop import TrainConfig, Trainer

    model = json.loads(args.model_config) if args.model_config else {}
    cfg = TrainConfig(
        data=args.data,
        val=args.val,
        name=args.name,
        runs_dir=args.runs_dir,
        max_minutes=args.max_minutes,
        max_epochs=args.epochs,
        batch=args.batch,
        crop=_pair(args.crop),
        scale=_floats(args.scale),
        lr=args.lr,
        loss=args.loss,
        class_weight_power=args.class_weight_power,
        val_every=args.val_every,
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
        args.out,
        name=args.name,
        version=args.version,
        check_dir=args.check_data,
        calibrate_dir=args.calibrate_on,
    )
    print(json.dumps(report, indent=1))
    return 0 if report.get("parity_ok", True) else 1


def cmd_eval(args: argparse.Namespace) -> int:
    from segserve.train.evaluate import evaluate_onnx

    report = evaluate_onnx(args.model, args.data, args.out, num_pictures=args.pictures, threads=args.threads)
    print(f"mIoU {report['miou']:.4f}  pixel accuracy {report['pixel_accuracy']:.4f}")
    for name, iou in report["per_class_iou"].items():
        print(f"  {name:<16} {iou if iou is None else round(iou, 4)}")
    print(f"report and pictures in {args.out}")
    return 0


# --- registration ---------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dataset {check,convert}``, ``train``, ``export`` and ``eval`` to the main CLI."""
    ds = subparsers.add_parser("dataset", help="check or convert training data")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    chk = ds_sub.add_parser("check", help="validate images/ + labels/ (k,k,k) pairs against classes.json")
    chk.add_argument("dirs", nargs="+", metavar="DIR", help="split folder(s) with images/ and labels/")
    chk.add_argument("--classes", help="label map JSON (default: DIR/classes.json or its parent's)")
    chk.set_defaults(func=cmd_dataset_check)
    cv = ds_sub.add_parser("convert", help="colour-coded label images + colour map -> training format")
    cv.add_argument("--images", required=True, help="folder of frames")
    cv.add_argument("--labels", required=True, help="folder of colour-coded label images (same stems)")
    cv.add_argument("--classes", required=True, help="label map JSON whose colours code the labels")
    cv.add_argument("--out", required=True, help="output split folder")
    cv.add_argument("--size", help="resize to WxH, e.g. 480x360")
    cv.add_argument("--unmapped", type=int, default=0, help="class id for unknown colours (default 0)")
    cv.set_defaults(func=cmd_dataset_convert)

    tr = subparsers.add_parser("train", help="train the real-time network (needs the train extra)")
    tr.add_argument("--data", required=True, help="train split folder")
    tr.add_argument("--val", help="val split folder (mIoU every --val-every epochs, best kept)")
    tr.add_argument("--name", default="camvid", help="run name: checkpoints in RUNS_DIR/NAME/")
    tr.add_argument("--runs-dir", default="runs")
    tr.add_argument("--max-minutes", type=float, default=75.0, help="time budget; the LR schedule follows it")
    tr.add_argument("--epochs", type=int, default=10_000, help="epoch budget (whichever ends first)")
    tr.add_argument("--batch", type=int, default=8)
    tr.add_argument("--crop", default="288x384", help="training crop HxW")
    tr.add_argument("--scale", default="0.5,2.0", help="random scale range")
    tr.add_argument("--lr", type=float, default=4e-3)
    tr.add_argument("--loss", choices=["ohem", "ce"], default="ohem")
    tr.add_argument(
        "--class-weight-power",
        type=float,
        default=0.5,
        help="class weights = (median freq / freq) ** POWER; 0 = unweighted",
    )
    tr.add_argument("--val-every", type=int, default=2, help="epochs between val mIoU checks")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--model-config", help="JSON overrides of ModelConfig widths")
    tr.add_argument("--resume", action="store_true", help="continue RUNS_DIR/NAME/last.pt")
    tr.set_defaults(func=cmd_train)

    ex = subparsers.add_parser("export", help="checkpoint -> served ONNX (uint8 NHWC in, uint8 labels out)")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", default=DEFAULT_MODEL)
    ex.add_argument("--name", default="segserve-camvid")
    ex.add_argument("--version", default="1")
    ex.add_argument("--check-data", help="split folder of real frames for the torch/ONNX parity check")
    ex.add_argument(
        "--calibrate-on",
        metavar="DIR",
        help="fit per-class logit offsets on this (training) split and fold them into the model",
    )
    ex.set_defaults(func=cmd_export)

    ev = subparsers.add_parser(
        "eval", help="mIoU, per-class IoU, confusion matrix and pictures of an ONNX model"
    )
    ev.add_argument("--model", default=DEFAULT_MODEL)
    ev.add_argument("--data", required=True, help="split folder with images/ and labels/")
    ev.add_argument("--out", default="eval-output", help="folder for report.json and PNGs")
    ev.add_argument("--pictures", type=int, default=4, help="side-by-side pictures to write")
    ev.add_argument("--threads", type=int, default=2)
    ev.set_defaults(func=cmd_eval)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m segserve.train.cli``) for when the main CLI is not at hand."""
    parser = argparse.ArgumentParser(prog="segserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
