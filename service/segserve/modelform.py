"""What form an exported network has, and what the server will do with it.

``analyse`` reads a model's inputs, outputs and metadata (it never runs the model) together with the
user's choices (flags first, then the model's ONNX metadata, then defaults) and decides: the input's
layout, size, batch, channel order and normalisation; which output is the mask and whether it holds
class scores or class ids. Every decision keeps where it came from, for ``segserve inspect`` and the
startup log. Whatever is ambiguous is a ModelError naming what was found and the flag that settles
it: a wrong mask served without an error is the one outcome this module exists to prevent.

Normalisation, as the model's authors publish it: with input range ``0..255`` the network sees
``(pixel - mean) / std``; with ``0..1`` it sees ``(pixel / 255 - mean) / std``, where a mean given in
pixel units (any value above 1, as ESPNet's ``(pixel - mean) / std / 255`` publishes it) is divided
by 255 first. Mean and std are listed in the model's own channel order (B G R for a BGR model).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import onnx
from onnx import TensorProto

from segserve.errors import ModelError
from segserve.labels import BUILT_IN, LabelMap, LabelMapError, load_label_spec, parse_label_text

T = TypeVar("T")

RGB, BGR = "rgb", "bgr"
CHANNEL_ORDERS = (RGB, BGR)
RANGES = ("0..1", "0..255")
NCHW, NHWC = "nchw", "nhwc"
LAYOUTS = (NCHW, NHWC)
SCORES, IDS = "scores", "ids"
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255
IMAGENET_STD = (58.395, 57.12, 57.375)
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
INTEGERS = {
    TensorProto.INT64,
    TensorProto.INT32,
    TensorProto.INT16,
    TensorProto.INT8,
    TensorProto.UINT64,
    TensorProto.UINT32,
    TensorProto.UINT16,
    TensorProto.UINT8,
}
MAX_CLASSES = 256  # served ids are uint8
# Metadata keys that describe pre- and post-processing (read here; rewritten when a model is wrapped).
PROCESSING_KEYS = ("mean", "std", "channel_order", "input_range", "layout", "output")
_TRIPLE = tuple[float, float, float]


@dataclass(frozen=True)
class Sourced(Generic[T]):
    """A value and where it came from: ``flag --x``, ``metadata 'x'``, ``model shape``, ``default``."""

    value: T
    source: str


@dataclass(frozen=True)
class ModelOptions:
    """What the user said about the model; None: ask the model's metadata, then the defaults."""

    mean: _TRIPLE | None = None
    std: _TRIPLE | None = None
    input_size: tuple[int, int] | None = None
    channel_order: str | None = None
    input_range: str | None = None
    layout: str | None = None
    output: str | None = None
    labels: str | None = None  # a file, or a built-in map's name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: int
    shape: tuple[int | str | None, ...]  # int: static, str: symbolic, None: unknown

    @property
    def type_name(self) -> str:
        """numpy's name for the element type (float32, int64, ...)."""
        try:
            return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type).name
        except (KeyError, ValueError, TypeError):
            return TensorProto.DataType.Name(self.elem_type).lower() if self.elem_type else "unknown"

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name!r} {self.type_name} [{dims}]"


@dataclass(frozen=True)
class InputForm:
    spec: TensorSpec
    layout: Sourced[str]
    size: Sourced[tuple[int, int]]  # (height, width); shown WxH
    static_batch: int | None  # None: the batch dimension is dynamic
    channel_order: Sourced[str]
    input_range: Sourced[str] | None  # None: uint8 input, the model normalises inside its graph
    mean: Sourced[_TRIPLE]
    std: Sourced[_TRIPLE]

    @property
    def normalises(self) -> bool:
        """True when segserve puts the normalisation in front of the network (a float input)."""
        return self.input_range is not None

    def pixel_mean_std(self) -> tuple[_TRIPLE, _TRIPLE]:
        """Mean and std on 0..255 pixel values, in the model's channel order: x = (p - mean) / std."""
        mean, std = self.mean.value, self.std.value
        if self.input_range is None or self.input_range.value == "0..255":
            return mean, std
        if all(v <= 1.0 for v in mean):
            mean = tuple(v * 255.0 for v in mean)  # type: ignore[assignment]
        return mean, tuple(v * 255.0 for v in std)  # type: ignore[return-value]


@dataclass(frozen=True)
class OutputForm:
    """One graph output as read: ``kind`` is None when it cannot be the mask, and ``reason`` says why."""

    spec: TensorSpec
    kind: str | None
    reason: str
    axis: int | None = None  # scores: the class axis; ids: the size-1 axis to drop (None for [N, H, W])
    classes: int | None = None
    size: tuple[int | str | None, int | str | None] = (None, None)

    def at_size(self, height: int, width: int) -> bool:
        return self.size == (height, width)


@dataclass(frozen=True)
class ModelForm:
    input: InputForm
    output: OutputForm
    output_choice: str  # how the output was chosen
    outputs: tuple[OutputForm, ...]
    labels: Sourced[LabelMap]
    opset: int
    metadata: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # warnings worth a log line (label map and class count disagree, ...)


# --- reading the graph ---------------------------------------------------------------------------


def tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
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


def real_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    initializers = {i.name for i in model.graph.initializer}
    return [tensor_spec(i) for i in model.graph.input if i.name not in initializers]


def outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [tensor_spec(o) for o in model.graph.output]


def found(model: onnx.ModelProto) -> str:
    """The model's inputs and outputs, for error messages."""
    ins = ", ".join(str(s) for s in real_inputs(model)) or "none"
    outs = ", ".join(str(s) for s in outputs(model)) or "none"
    return f"found inputs: {ins}; outputs: {outs}"


def metadata_of(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def opset_of(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _static(dim: int | str | None) -> bool:
    return isinstance(dim, int) and dim > 0


# --- the user's choices ----------------------------------------------------------------------------


def _choice(flag: T | None, flag_name: str, meta: dict[str, str], key: str) -> tuple[T | str | None, str]:
    if flag is not None:
        return flag, f"flag {flag_name}"
    if key in meta:
        return meta[key], f"metadata {key!r}"
    return None, "default"


def _one_of(value: str, allowed: tuple[str, ...], source: str) -> str:
    text = value.strip().lower().replace("-", "..").replace(" ", "")
    if text not in allowed:
        raise ModelError(f"{source} is {value!r}; expected one of {', '.join(allowed)}")
    return text


def _triple(value: object, source: str) -> _TRIPLE:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ModelError(f"{source} must be a JSON list of 3 numbers, got {value!r}") from exc
    try:
        # anything but an iterable of numbers raises TypeError or ValueError, reported below
        values = tuple(float(v) for v in cast("Iterable[Any]", value))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{source} must be 3 numbers, got {value!r}") from exc
    if len(values) != 3:
        raise ModelError(f"{source} must have 3 values (one per channel), got {len(values)}")
    return values


def _normalisation(
    options: ModelOptions, meta: dict[str, str], order: str
) -> tuple[Sourced, Sourced, Sourced]:
    raw_range, range_source = _choice(options.input_range, "--input-range", meta, "input_range")
    value_range = "0..255" if raw_range is None else _one_of(str(raw_range), RANGES, range_source)
    unit = 1.0 if value_range == "0..255" else 1.0 / 255.0
    picked = []
    for name, flag, default in (("mean", options.mean, IMAGENET_MEAN), ("std", options.std, IMAGENET_STD)):
        raw, source = _choice(flag, f"--{name}", meta, name)
        if raw is None:
            rgb = tuple(v * unit for v in default)
            value = rgb[::-1] if order == BGR else rgb
            source = f"default (ImageNet, {value_range}, {order.upper()})"
        else:
            value = _triple(raw, source)
        picked.append(Sourced(value, source))
    mean, std = picked
    if any(v <= 0 for v in std.value):
        raise ModelError(f"std {list(std.value)} ({std.source}) must be positive")
    if value_range == "0..255" and 0 < max(abs(v) for v in mean.value) <= 1:
        raise ModelError(
            f"mean {list(mean.value)} ({mean.source}) looks like 0..1 units but the input range is 0..255"
            f" ({range_source}): give --input-range 0..1 (or the mean in 0..255 units)"
        )
    return Sourced(value_range, range_source), mean, std


def _channel_order(options: ModelOptions, meta: dict[str, str]) -> Sourced[str]:
    raw, source = _choice(options.channel_order, "--channel-order", meta, "channel_order")
    return Sourced(RGB if raw is None else _one_of(str(raw), CHANNEL_ORDERS, source), source)


# --- the input -----------------------------------------------------------------------------------


def _layout(spec: TensorSpec, options: ModelOptions, meta: dict[str, str], model: onnx.ModelProto) -> Sourced:
    c_first, c_last = spec.shape[1], spec.shape[3]
    raw, source = _choice(options.layout, "--layout", meta, "layout")
    if raw is not None:
        layout = _one_of(str(raw), LAYOUTS, source)
        channels = c_first if layout == NCHW else c_last
        if _static(channels) and channels != 3:
            raise ModelError(
                f"{source} says {layout.upper()}, but input {spec} then has {channels} channels, not 3"
            )
        return Sourced(layout, source)
    first_ok = c_first == 3 or not _static(c_first)
    last_ok = c_last == 3 or not _static(c_last)
    if first_ok and (not last_ok or (c_first == 3 and not _static(c_last))):
        return Sourced(NCHW, "model shape")
    if last_ok and (not first_ok or (c_last == 3 and not _static(c_first))):
        return Sourced(NHWC, "model shape")
    if not first_ok and not last_ok:
        raise ModelError(f"input {spec} is not a 3-channel image in NCHW or NHWC layout; {found(model)}")
    raise ModelError(
        f"input {spec} could be NCHW or NHWC: give --layout nchw or --layout nhwc; {found(model)}"
    )


def _input(model: onnx.ModelProto, options: ModelOptions, meta: dict[str, str]) -> InputForm:
    inputs = real_inputs(model)
    if len(inputs) != 1:
        raise ModelError(f"the model must have exactly one image input, it has {len(inputs)}; {found(model)}")
    spec = inputs[0]
    if spec.elem_type not in FLOATS | {TensorProto.UINT8}:
        raise ModelError(
            f"input {spec}: segserve feeds uint8 pixels or float32/float16/float64 values, not "
            f"{spec.type_name}; {found(model)}"
        )
    if len(spec.shape) != 4:
        raise ModelError(
            f"input {spec} has {len(spec.shape)} dimensions; an image input is [N, 3, H, W] or "
            f"[N, H, W, 3]; {found(model)}"
        )
    layout = _layout(spec, options, meta, model)
    dims = (spec.shape[2], spec.shape[3]) if layout.value == NCHW else (spec.shape[1], spec.shape[2])
    if options.input_size is not None:
        for dim, wanted, what in zip(dims, options.input_size, ("height", "width"), strict=True):
            if _static(dim) and dim != wanted:
                raise ModelError(
                    f"--input-size {options.input_size[1]}x{options.input_size[0]} disagrees with the "
                    f"model's static input {what} {dim} (input {spec}): drop --input-size"
                )
        size = Sourced(options.input_size, "flag --input-size")
    elif _static(dims[0]) and _static(dims[1]):
        size = Sourced((int(dims[0]), int(dims[1])), "model shape")  # type: ignore[arg-type]
    else:
        raise ModelError(
            f"the input size of {spec} is dynamic: give the size to serve at with --input-size WxH"
        )
    order = _channel_order(options, meta)
    if spec.elem_type == TensorProto.UINT8:
        # Informational only: the model's own graph normalises (metadata may say how).
        value_range = None
        inside = "in the model's graph"
        mean = Sourced(_triple(meta["mean"], "metadata 'mean'") if "mean" in meta else IMAGENET_MEAN, inside)
        std = Sourced(_triple(meta["std"], "metadata 'std'") if "std" in meta else IMAGENET_STD, inside)
    else:
        value_range, mean, std = _normalisation(options, meta, order.value)
    batch = spec.shape[0]
    return InputForm(
        spec=spec,
        layout=layout,
        size=size,
        static_batch=int(batch) if _static(batch) else None,  # type: ignore[arg-type]
        channel_order=order,
        input_range=value_range,
        mean=mean,
        std=std,
    )


# --- the outputs ---------------------------------------------------------------------------------


def _aspect_ok(size: tuple[int | str | None, int | str | None], height: int, width: int) -> bool:
    h, w = size
    if not (_static(h) and _static(w)):
        return True
    sh, sw = height / h, width / w  # type: ignore[operator]
    return abs(sh - sw) <= 0.1 * max(sh, sw)


def read_output(spec: TensorSpec, layout: str, height: int, width: int) -> OutputForm:
    """How one output could serve as the mask, or why it cannot (kind None)."""
    shape, rank = spec.shape, len(spec.shape)
    wxh = f"{width}x{height}"
    if spec.elem_type in INTEGERS:
        if rank == 3:
            axis, size = None, (shape[1], shape[2])
        elif rank == 4 and shape[1] == 1 and (layout == NCHW or shape[3] != 1):
            axis, size = 1, (shape[2], shape[3])
        elif rank == 4 and shape[3] == 1:
            axis, size = 3, (shape[1], shape[2])
        else:
            return OutputForm(
                spec,
                None,
                "integer, but class ids are [N, H, W] or [N, 1, H, W] (quantised scores are not served)",
            )
        if not _aspect_ok(size, height, width):
            return OutputForm(spec, None, f"integer, but {size[1]}x{size[0]} is not the input's {wxh} shape")
        how = "at the input size" if size == (height, width) else f"resized (nearest) to {wxh}"
        return OutputForm(spec, IDS, f"class ids, {how}", axis, None, size)
    if spec.elem_type in FLOATS:
        if rank != 4:
            return OutputForm(
                spec, None, "float, but class scores are [N, C, h, w] (float class ids are not served)"
            )
        readings = [(1, (shape[2], shape[3])), (3, (shape[1], shape[2]))]
        if layout == NHWC:
            readings.reverse()
        fits = [(axis, size) for axis, size in readings if _aspect_ok(size, height, width)]
        if not fits:
            return OutputForm(spec, None, f"float, but neither layout has the input's {wxh} shape")
        axis, size = fits[0]
        classes = shape[axis]
        if classes == 1:
            return OutputForm(
                spec,
                None,
                "one float channel is ambiguous (a score to threshold? ids as floats?); "
                "export two-class scores or integer ids",
            )
        if _static(classes) and classes > MAX_CLASSES:  # type: ignore[operator]
            return OutputForm(spec, None, f"{classes} classes; served class ids are uint8 (at most 256)")
        c_text = f"{classes} classes" if _static(classes) else "classes unknown until run"
        layout_text = "NCHW" if axis == 1 else "NHWC"
        how = "at the input size" if size == (height, width) else f"resized (linear) to {wxh} before argmax"
        return OutputForm(
            spec,
            SCORES,
            f"class scores {layout_text}, {c_text}, {how}",
            axis,
            int(classes) if _static(classes) else None,  # type: ignore[arg-type]
            size,
        )
    return OutputForm(spec, None, f"{spec.type_name} is neither class scores nor class ids")


def _pick_output(
    model: onnx.ModelProto, options: ModelOptions, meta: dict[str, str], forms: list[OutputForm]
) -> tuple[OutputForm, str]:
    listing = "; ".join(f"{f.spec}: {f.reason}" for f in forms)
    raw, source = _choice(options.output, "--output", meta, "output")
    if raw is not None:
        chosen = [f for f in forms if f.spec.name == raw]
        if not chosen:
            raise ModelError(f"{source} names {raw!r}, which the model does not output; outputs: {listing}")
        if chosen[0].kind is None:
            raise ModelError(f"{source}: output {chosen[0].spec} cannot be the mask: {chosen[0].reason}")
        return chosen[0], source
    usable = [f for f in forms if f.kind is not None]
    if len(usable) == 1:
        return usable[0], "the only mask-like output" if len(forms) > 1 else "the only output"
    if not usable:
        raise ModelError(
            f"no output can be the mask: {listing}. segserve serves class scores [N, C, h, w] "
            f"(float) or class ids [N, H, W] / [N, 1, H, W] (integer); {found(model)}"
        )
    names = ", ".join(repr(f.spec.name) for f in usable)
    raise ModelError(
        f"{len(usable)} outputs could be the mask ({names}): choose one with --output NAME; {listing}"
    )


# --- labels --------------------------------------------------------------------------------------


def _labels(
    options: ModelOptions, meta: dict[str, str], path: Path | None, classes: int | None
) -> Sourced[LabelMap]:
    try:
        if options.labels:
            labels, source = load_label_spec(options.labels)
            return Sourced(labels, f"flag --labels ({source})")
        if path is not None and path.with_suffix(".labels.json").is_file():
            sidecar = path.with_suffix(".labels.json")
            return Sourced(LabelMap.load(sidecar), f"file {sidecar} (beside the model)")
        if "labels" in meta:
            text = meta["labels"].strip()
            if text.lower() in BUILT_IN:
                return Sourced(BUILT_IN[text.lower()], f"metadata 'labels' (built-in {text.lower()})")
            return Sourced(parse_label_text(text, "metadata 'labels'"), "metadata 'labels'")
    except LabelMapError as exc:
        raise ModelError(str(exc)) from exc
    count = classes or MAX_CLASSES
    return Sourced(LabelMap.default(count), f"default (class_0..class_{count - 1})")


def _label_notes(labels: Sourced[LabelMap], classes: int | None) -> list[str]:
    if classes is None:
        return []
    ids = {c.id for c in labels.value.classes}
    notes = []
    unnamed = sorted(set(range(classes)) - ids)
    if unnamed:
        notes.append(
            f"the model has {classes} classes but the label map ({labels.source}) names none for ids "
            f"{unnamed[:8]}{' ...' if len(unnamed) > 8 else ''}: they are drawn black"
        )
    extra = sorted(i for i in ids if i >= classes)
    if extra:
        notes.append(
            f"the label map ({labels.source}) has ids {extra[:8]}{' ...' if len(extra) > 8 else ''} that "
            f"the model's {classes} classes never produce: is it the right map?"
        )
    return notes


# --- all together ----------------------------------------------------------------------------------


def analyse(
    model: onnx.ModelProto, options: ModelOptions | None = None, path: Path | None = None
) -> ModelForm:
    """Decide how to serve ``model``. Raises ModelError naming what was found and the flag that helps."""
    options = options or ModelOptions()
    meta = metadata_of(model)
    inp = _input(model, options, meta)
    height, width = inp.size.value
    forms = [read_output(spec, inp.layout.value, height, width) for spec in outputs(model)]
    if not forms:
        raise ModelError(f"the model has no output; {found(model)}")
    output, choice = _pick_output(model, options, meta, forms)
    labels = _labels(options, meta, path, output.classes)
    notes = _label_notes(labels, output.classes)
    if not inp.normalises and (options.mean or options.std or options.input_range):
        notes.append(
            "--mean/--std/--input-range are ignored: the model takes uint8 pixels and normalises them"
        )
    return ModelForm(inp, output, choice, tuple(forms), labels, opset_of(model), meta, tuple(notes))


def describe(form: ModelForm) -> list[str]:
    """Human lines: what was found, what will be done, and where each value came from."""
    inp, out = form.input, form.output
    h, w = inp.size.value
    lines = [
        f"input    {inp.spec}",
        f"  layout         {inp.layout.value.upper():<24} ({inp.layout.source})",
        f"  size           {f'{w}x{h}':<24} ({inp.size.source})",
        "  batch          "
        + (f"static {inp.static_batch}" if inp.static_batch else "dynamic").ljust(24)
        + " (model shape)",
        f"  channel order  {inp.channel_order.value.upper():<24} ({inp.channel_order.source})",
    ]
    if inp.normalises and inp.input_range is not None:
        mean = " ".join(f"{v:g}" for v in inp.mean.value)
        std = " ".join(f"{v:g}" for v in inp.std.value)
        lines += [
            f"  input range    {inp.input_range.value:<24} ({inp.input_range.source})",
            f"  mean           {mean:<24} ({inp.mean.source})",
            f"  std            {std:<24} ({inp.std.source})",
        ]
        px_mean, px_std = inp.pixel_mean_std()
        px_mean_text = " ".join(f"{v:.6g}" for v in px_mean)
        px_std_text = " ".join(f"{v:.6g}" for v in px_std)
        lines.append(
            f"  the network gets (pixel - [{px_mean_text}]) / [{px_std_text}], "
            f"pixels 0..255 in {inp.channel_order.value.upper()} order"
        )
    else:
        lines.append("  normalisation  none added (uint8 input: the model normalises inside its graph)")
    lines.append("outputs")
    for o in form.outputs:
        mark = "*" if o.spec.name == out.spec.name else " "
        lines.append(f"  {mark} {o.spec}: {o.reason}")
    lines.append(f"  mask from {out.spec.name!r} ({form.output_choice})")
    labels = form.labels.value
    lines.append(f"labels   {len(labels)} classes ({form.labels.source})")
    lines += [f"note     {n}" for n in form.notes]
    return lines
