"""The ``caml.*`` metadata of an ONNX export, read straight from the file's protobuf.

OpenVINO does not pass an ONNX model's ``metadata_props`` on
(``read_model(...).get_rt_info()`` is empty), and neither runtime should
need the ``onnx`` package to read them, so this reads the few top-level
fields itself: ``ModelProto`` field 14 is ``metadata_props``, each a
``StringStringEntryProto`` with ``key`` = 1 and ``value`` = 2 (onnx.proto).
Every other field is skipped by its wire type without being read: the graph,
megabytes of weights, is passed over with one seek. Both runtimes load their
settings through this one reader.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Dict, Tuple, Union

from ..errors import CAMLError

PathLike = Union[str, Path]
#: ``ModelProto.metadata_props`` and the fields of its ``StringStringEntryProto`` entries (onnx.proto).
METADATA_PROPS_FIELD = 14
KEY_FIELD, VALUE_FIELD = 1, 2
#: Protobuf wire types: varint, 64-bit, length-delimited, 32-bit (3 and 4, groups, ONNX never uses).
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


class OnnxModelError(CAMLError, ValueError):
    """An ONNX export that cannot be used (missing, unreadable, not this project's, or for another model)."""


def read_export_metadata(path: PathLike) -> Dict[str, str]:
    """``metadata_props`` of the ONNX model at ``path`` as a dict (no ``onnx`` or runtime package needed).

    A later entry with the same key wins, as in ONNX Runtime's ``custom_metadata_map``.
    """
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"{path}: ONNX export not found")
    metadata: Dict[str, str] = {}
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            while f.tell() < size:
                number, wire = _tag(f)
                if number == METADATA_PROPS_FIELD and wire == LENGTH_DELIMITED:
                    key, value = _entry(_read(f, _varint(f)))
                    metadata[key] = value
                else:
                    _skip(f, wire, size)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OnnxModelError(f"{path}: not a usable ONNX model ({exc})") from None
    return metadata


def _varint(f: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("the file ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a number longer than 64 bits")


def _tag(f: BinaryIO) -> Tuple[int, int]:
    tag = _varint(f)
    if tag >> 3 == 0:
        raise ValueError("field number 0")
    return tag >> 3, tag & 7


def _read(f: BinaryIO, count: int) -> bytes:
    data = f.read(count)
    if len(data) != count:
        raise ValueError("the file ends inside a field")
    return data


def _skip(f: BinaryIO, wire: int, size: int) -> None:
    if wire == VARINT:
        _varint(f)
    elif wire in (FIXED64, FIXED32, LENGTH_DELIMITED):
        count = {FIXED64: 8, FIXED32: 4}.get(wire) or _varint(f)
        if f.tell() + count > size:
            raise ValueError("the file ends inside a field")
        f.seek(count, 1)
    else:
        raise ValueError(f"protobuf wire type {wire} is not used by ONNX models")


def _entry(data: bytes) -> Tuple[str, str]:
    """The ``key`` and ``value`` of one ``StringStringEntryProto`` (a missing field is an empty string)."""
    fields = {KEY_FIELD: "", VALUE_FIELD: ""}
    f = io.BytesIO(data)
    while f.tell() < len(data):
        number, wire = _tag(f)
        if number in fields and wire == LENGTH_DELIMITED:
            fields[number] = _read(f, _varint(f)).decode("utf-8")
        else:
            _skip(f, wire, len(data))
    return fields[KEY_FIELD], fields[VALUE_FIELD]
