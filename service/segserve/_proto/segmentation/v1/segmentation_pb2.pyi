from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]

class MaskEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_ENCODING_UNSPECIFIED: _ClassVar[MaskEncoding]
    MASK_ENCODING_NONE: _ClassVar[MaskEncoding]
    MASK_ENCODING_RAW: _ClassVar[MaskEncoding]
    MASK_ENCODING_PNG: _ClassVar[MaskEncoding]
    MASK_ENCODING_PNG_RGB: _ClassVar[MaskEncoding]

class MaskResolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_RESOLUTION_UNSPECIFIED: _ClassVar[MaskResolution]
    MASK_RESOLUTION_FRAME: _ClassVar[MaskResolution]
    MASK_RESOLUTION_MODEL: _ClassVar[MaskResolution]

class OverlayEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERLAY_ENCODING_UNSPECIFIED: _ClassVar[OverlayEncoding]
    OVERLAY_ENCODING_NONE: _ClassVar[OverlayEncoding]
    OVERLAY_ENCODING_JPEG: _ClassVar[OverlayEncoding]
    OVERLAY_ENCODING_PNG: _ClassVar[OverlayEncoding]

class StreamPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_POLICY_UNSPECIFIED: _ClassVar[StreamPolicy]
    STREAM_POLICY_QUEUE: _ClassVar[StreamPolicy]
    STREAM_POLICY_LATEST: _ClassVar[StreamPolicy]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
MASK_ENCODING_UNSPECIFIED: MaskEncoding
MASK_ENCODING_NONE: MaskEncoding
MASK_ENCODING_RAW: MaskEncoding
MASK_ENCODING_PNG: MaskEncoding
MASK_ENCODING_PNG_RGB: MaskEncoding
MASK_RESOLUTION_UNSPECIFIED: MaskResolution
MASK_RESOLUTION_FRAME: MaskResolution
MASK_RESOLUTION_MODEL: MaskResolution
OVERLAY_ENCODING_UNSPECIFIED: OverlayEncoding
OVERLAY_ENCODING_NONE: OverlayEncoding
OVERLAY_ENCODING_JPEG: OverlayEncoding
OVERLAY_ENCODING_PNG: OverlayEncoding
STREAM_POLICY_UNSPECIFIED: StreamPolicy
STREAM_POLICY_QUEUE: StreamPolicy
STREAM_POLICY_LATEST: StreamPolicy

class RawImage(_message.Message):
    __slots__ = ("width", "height", "format", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: PixelFormat
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("mask", "mask_resolution", "overlay", "overlay_alpha", "overlay_jpeg_quality", "coverage")
    MASK_FIELD_NUMBER: _ClassVar[int]
    MASK_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_ALPHA_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    mask: MaskEncoding
    mask_resolution: MaskResolution
    overlay: OverlayEncoding
    overlay_alpha: float
    overlay_jpeg_quality: int
    coverage: bool
    def __init__(self, mask: _Optional[_Union[MaskEncoding, str]] = ..., mask_resolution: _Optional[_Union[MaskResolution, str]] = ..., overlay: _Optional[_Union[OverlayEncoding, str]] = ..., overlay_alpha: _Optional[float] = ..., overlay_jpeg_quality: _Optional[int] = ..., coverage: _Optional[bool] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("frame_id", "encoded", "raw", "outputs", "capture_time_us", "stream_policy")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    STREAM_POLICY_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    encoded: bytes
    raw: RawImage
    outputs: OutputOptions
    capture_time_us: int
    stream_policy: StreamPolicy
    def __init__(self, frame_id: _Optional[str] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., outputs: _Optional[_Union[OutputOptions, _Mapping]] = ..., capture_time_us: _Optional[int] = ..., stream_policy: _Optional[_Union[StreamPolicy, str]] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("decode_us", "queue_us", "preprocess_us", "inference_us", "postprocess_us", "encode_us", "total_us", "batch_size")
    DECODE_US_FIELD_NUMBER: _ClassVar[int]
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_US_FIELD_NUMBER: _ClassVar[int]
    ENCODE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decode_us: int
    queue_us: int
    preprocess_us: int
    inference_us: int
    postprocess_us: int
    encode_us: int
    total_us: int
    batch_size: int
    def __init__(self, decode_us: _Optional[int] = ..., queue_us: _Optional[int] = ..., preprocess_us: _Optional[int] = ..., inference_us: _Optional[int] = ..., postprocess_us: _Optional[int] = ..., encode_us: _Optional[int] = ..., total_us: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("width", "height", "encoding", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    encoding: MaskEncoding
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[MaskEncoding, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Overlay(_message.Message):
    __slots__ = ("width", "height", "encoding", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    encoding: OverlayEncoding
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[OverlayEncoding, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ClassCoverage(_message.Message):
    __slots__ = ("class_id", "name", "fraction")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    name: str
    fraction: float
    def __init__(self, class_id: _Optional[int] = ..., name: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("frame_id", "mask", "overlay", "coverage", "timing", "model", "capture_time_us", "error", "dropped")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    mask: Mask
    overlay: Overlay
    coverage: _containers.RepeatedCompositeFieldContainer[ClassCoverage]
    timing: Timing
    model: str
    capture_time_us: int
    error: FrameError
    dropped: bool
    def __init__(self, frame_id: _Optional[str] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., overlay: _Optional[_Union[Overlay, _Mapping]] = ..., coverage: _Optional[_Iterable[_Union[ClassCoverage, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model: _Optional[str] = ..., capture_time_us: _Optional[int] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., dropped: _Optional[bool] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassInfo(_message.Message):
    __slots__ = ("id", "name", "color_rgb")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOR_RGB_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    color_rgb: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., color_rgb: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "input_width", "input_height", "classes", "providers", "max_batch", "dynamic_batch", "sha256", "wrapped", "channel_order", "input_range", "input_layout", "input_type", "static_batch", "output_name", "output_kind", "label_source", "mean", "std", "decode_device", "decode_note")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    INPUT_RANGE_FIELD_NUMBER: _ClassVar[int]
    INPUT_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATIC_BATCH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    DECODE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    DECODE_NOTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    input_width: int
    input_height: int
    classes: _containers.RepeatedCompositeFieldContainer[ClassInfo]
    providers: _containers.RepeatedScalarFieldContainer[str]
    max_batch: int
    dynamic_batch: bool
    sha256: str
    wrapped: bool
    channel_order: str
    input_range: str
    input_layout: str
    input_type: str
    static_batch: int
    output_name: str
    output_kind: str
    label_source: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    decode_device: str
    decode_note: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., classes: _Optional[_Iterable[_Union[ClassInfo, _Mapping]]] = ..., providers: _Optional[_Iterable[str]] = ..., max_batch: _Optional[int] = ..., dynamic_batch: _Optional[bool] = ..., sha256: _Optional[str] = ..., wrapped: _Optional[bool] = ..., channel_order: _Optional[str] = ..., input_range: _Optional[str] = ..., input_layout: _Optional[str] = ..., input_type: _Optional[str] = ..., static_batch: _Optional[int] = ..., output_name: _Optional[str] = ..., output_kind: _Optional[str] = ..., label_source: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., decode_device: _Optional[str] = ..., decode_note: _Optional[str] = ...) -> None: ...
