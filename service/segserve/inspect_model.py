"""``segserve inspect MODEL [model flags]``: what the server would do with a model, before serving it.

Prints the inputs and outputs found, the layout, channel order, input range, mean and std with where
each value came from, the batch limits and the label map's source; then runs the model once on a
frame. Exits 1 with the reason, never a traceback, when the model cannot be served; a bad flag value
is a one-line usage error (exit 2), as for ``serve``, whose option definitions these are.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segserve import options as o
from segserve.options import Option
from segserve.settings import MODEL_OPTIONS, ServeSettings

if TYPE_CHECKING:
    from segserve.engine import EngineConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show how a model would be served (inputs, outputs, normalisation, batch, labels); run it once",
        description=__doc__,
    )
    p.add_argument("model", type=Path, help="ONNX model file")
    o.add_options(p, MODEL_OPTIONS)  # serve's own definitions: same names, variables and checks
    frame = Option(
        "--frame",
        "image to run once",
        None,
        o.existing_file,
        env=None,
        shown="a synthetic frame",
        metavar="PATH",
    )
    o.add_options(p, (frame,))
    p.set_defaults(func=run)


def _frame(path: Path | None, height: int, width: int) -> tuple[np.ndarray, str]:
    """A BGR frame: the file given, else a synthetic street-like picture at the model's size."""
    import cv2

    from segserve.errors import ModelError

    if path is not None:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise ModelError(f"cannot read the frame {path} as an image")
        return frame, f"{path} ({frame.shape[1]}x{frame.shape[0]})"
    frame = np.zeros((height, width, 3), np.uint8)
    frame[: height // 2] = (235, 200, 140)  # sky
    frame[height // 2 :] = (90, 90, 90)  # road
    cv2.rectangle(frame, (width // 3, height // 2), (width // 2, 3 * height // 4), (30, 30, 200), -1)
    return frame, f"synthetic {width}x{height}"


def _inspect(args: argparse.Namespace, config: EngineConfig) -> int:
    import cv2

    from segserve.engine import Engine
    from segserve.graph import prepare_model
    from segserve.modelform import describe

    data = Path(args.model).read_bytes() if Path(args.model).is_file() else b""
    prepared = prepare_model(config.model, options=config.model_options())
    form = prepared.form
    assert form is not None
    print(f"model    {args.model} ({len(data) / 1e6:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()[:12]})")
    print(f"         {prepared.metadata.name}@{prepared.metadata.version}, opset {form.opset}")
    for line in describe(form):
        print(line)
    engine = Engine(config, prepared)
    static = form.input.static_batch
    limit = min(config.max_batch, engine.max_batch)
    if static:
        batching = f"static {static}: batches of up to {limit}" + (
            f", padded to {static}" if static > 1 else ""
        )
    else:
        batching = f"dynamic: batches of up to {limit} (--max-batch)"
    print(f"batch    {batching}")
    print(f"runs on  {' > '.join(engine.providers)}")
    height, width = engine.input_hw
    frame, frame_name = _frame(args.frame, height, width)
    model_input = cv2.cvtColor(
        cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB
    )
    start = time.perf_counter()
    ids = engine.run(model_input[None])[0]
    elapsed_ms = (time.perf_counter() - start) * 1e3
    names = prepared.metadata.labels.names
    values, counts = np.unique(ids, return_counts=True)
    order = np.argsort(-counts)
    seen = ", ".join(
        f"{names.get(int(values[i]), f'id {int(values[i])} (not in the label map)')} "
        f"{100 * counts[i] / ids.size:.1f}%"
        for i in order[:6]
    )
    print(f"ran once {frame_name}: first run {elapsed_ms:.1f} ms; mask {ids.shape[1]}x{ids.shape[0]}: {seen}")
    unknown = sorted(int(v) for v in values if int(v) not in names)
    if unknown:
        print(f"note     ids {unknown[:8]} are not in the label map: they are drawn black")
    print("segserve can serve this model with these flags.")
    return 0


def run(args: argparse.Namespace) -> int:
    from segserve.errors import ModelError
    from segserve.labels import LabelMapError

    # A bad flag value is a usage error (exit 2, raised before the model is read), as it is for serve.
    config = ServeSettings.for_model(args.model, args).engine_config()
    logging.getLogger("segserve").setLevel(logging.ERROR)  # inspect prints the same facts itself
    try:
        return _inspect(args, config)
    except (ModelError, LabelMapError, OSError) as exc:
        print(f"cannot serve {args.model}: {exc}", file=sys.stderr)
    except Exception as exc:  # onnxruntime's own errors at the first run, and anything unforeseen
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"cannot serve {args.model}: {type(exc).__name__}: {first}", file=sys.stderr)
    return 1
