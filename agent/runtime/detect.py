"""Recognize a model format from the file's bytes (no runtime imported).

* TFLite: a FlatBuffer whose file identifier at bytes 4:8 is ``b"TFL3"``.
* ONNX: a protobuf ``ModelProto``. Protobuf has no magic number, so the top level of
  the message is walked (tags, varints, length-delimited fields, nothing decoded) and
  must hold an ``ir_version`` (field 1, varint) and a ``graph`` (field 7, bytes) and end
  exactly at the end of the file. Text, numpy files and random bytes fail that walk
  within a few bytes; a truncated ONNX file fails it at the cut.
"""

from __future__ import annotations

from edgefleet.agent.runtime.signature import Framework

TFLITE_IDENTIFIER = b"TFL3"
_EXTENSIONS = {
    ".onnx": Framework.ONNX,
    ".tflite": Framework.TFLITE,
    ".lite": Framework.TFLITE,
}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_IR_VERSION_FIELD, _GRAPH_FIELD = 1, 7


class NotAModel(ValueError):
    """The bytes are not a model of the expected format; the message says why."""


def framework_for_extension(suffix: str) -> Framework | None:
    """The framework a file extension announces (case-insensitive), or None."""
    return _EXTENSIONS.get(suffix.lower())


def detect_framework(data: bytes) -> Framework:
    """The model format of ``data``.

    Raises:
        NotAModel: neither a TFLite flatbuffer nor an ONNX ModelProto; the message
            explains what is wrong (truncated protobuf, missing graph, ...).
    """
    if len(data) >= 8 and data[4:8] == TFLITE_IDENTIFIER:
        return Framework.TFLITE
    check_onnx_structure(data)
    return Framework.ONNX


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise NotAModel("truncated (a number runs past the end of the file)")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise NotAModel("malformed protobuf (varint longer than 10 bytes)")


def check_onnx_structure(data: bytes) -> None:
    """Walk the top level of a protobuf ``ModelProto``.

    Raises:
        NotAModel: the bytes are not a well-formed ModelProto (see module docstring).
    """
    if not data:
        raise NotAModel("the file is empty")
    pos = 0
    end = len(data)
    seen: set[int] = set()
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise NotAModel("not a TFLite flatbuffer or an ONNX protobuf (invalid field 0)")
        if wire == _VARINT:
            _, pos = _varint(data, pos)
        elif wire == _BYTES:
            length, pos = _varint(data, pos)
            pos += length
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        else:
            raise NotAModel(
                f"not a TFLite flatbuffer or an ONNX protobuf (invalid wire type {wire})"
            )
        if pos > end:
            raise NotAModel(f"truncated: field {field} needs {pos - end} byte(s) past the end")
        if field == _IR_VERSION_FIELD and wire != _VARINT:
            raise NotAModel("not an ONNX model (ir_version is not a number)")
        if field == _GRAPH_FIELD and wire != _BYTES:
            raise NotAModel("not an ONNX model (graph is not a message)")
        seen.add(field)
    if _GRAPH_FIELD not in seen or _IR_VERSION_FIELD not in seen:
        raise NotAModel("not an ONNX model (no ir_version or no graph)")
