"""TFRecord files of tf.Example protobufs, read and written without TensorFlow.

Framing of one record (all integers little-endian)::

    uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

The Multi-Object Datasets files are GZIP-compressed streams of such records, each
record a serialized ``tensorflow.Example``. :func:`read_records` streams them (it
never holds more than one record in memory) and checks both CRCs; a corrupt or
truncated record raises :class:`~emorl.errors.DatasetError` naming the file and
the record index (0-based).

The tf.Example message classes are built at import time from a
``FileDescriptorProto`` that mirrors ``tensorflow/core/example/feature.proto`` and
``example.proto`` (same package, names and field numbers), in a private descriptor
pool so that they never clash with an installed TensorFlow.

:func:`parse_example` decodes features as ``tf.io.parse_single_example`` with
``FixedLenFeature`` does, and bytes features as ``tf.io.decode_raw(uint8)`` followed
by squeezing the last axis: one 1-byte string per element. For speed it parses a
wire-compatible view of the Example in which ``bytes_list`` is kept as its raw
serialized bytes; a list of 1-byte strings is then exactly the byte triples
``0x0A 0x01 b``, decoded with numpy. Anything else falls back to the full
``BytesList`` message.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Mapping

import crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from emorl.errors import DatasetError

__all__ = [
    "BytesList", "FloatList", "Int64List", "Feature", "Features", "Example",
    "FixedLenFeature", "masked_crc32c", "frame_record", "read_records", "TFRecordWriter",
    "parse_example", "serialize_example", "feature_sizes", "write_examples",
]

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked CRC of the 8 length bytes
_FOOTER = struct.Struct("<I")  # masked CRC of the data
_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------- framing

def masked_crc32c(data: bytes) -> int:
    """CRC-32C of ``data``, masked as TFRecord does: rotate right by 15, add 0xA282EAD8."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record in TFRecord framing (length, its CRC, data, data CRC)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


def _corrupt(path: Path, index: int, problem: str) -> DatasetError:
    return DatasetError(
        f"{path}: record {index} (0-based): {problem}; the file is corrupt or truncated: "
        "download it again (or convert fewer records)"
    )


def _open_stream(path: Path, compression: str | None) -> BinaryIO:
    if compression not in ("gzip", None):
        raise ValueError(f"compression must be 'gzip' or None, got {compression!r}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such TFRecord file")
    if compression is None:
        return open(path, "rb")
    with open(path, "rb") as raw:
        magic = raw.read(2)
    if magic != _GZIP_MAGIC:
        raise DatasetError(
            f"{path}: not a GZIP file (starts with {magic.hex() or 'nothing'}, expected 1f8b); the "
            "Multi-Object Datasets files are GZIP-compressed TFRecords: check that this is one of them"
        )
    return gzip.open(path, "rb")


def _read(stream: BinaryIO, size: int, path: Path, index: int) -> bytes:
    try:
        return stream.read(size)
    except (EOFError, OSError, zlib.error) as error:  # truncated or corrupt GZIP stream
        raise _corrupt(path, index, f"cannot decompress ({error})") from error


def read_records(path: str | Path, compression: str | None = "gzip") -> Iterator[bytes]:
    """Yield the data of each record of a TFRecord file, in order, checking both CRCs."""
    path = Path(path)
    with _open_stream(path, compression) as stream:
        index = 0
        while True:
            header = _read(stream, _HEADER.size, path, index)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise _corrupt(path, index, f"truncated: the header has {len(header)} of {_HEADER.size} bytes")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise _corrupt(path, index, "length CRC mismatch (the record header is damaged)")
            data = _read(stream, length, path, index)
            footer = _read(stream, _FOOTER.size, path, index)
            if len(data) < length or len(footer) < _FOOTER.size:
                raise _corrupt(path, index, f"truncated: expected {length} data bytes and a 4-byte CRC, "
                                            f"found {len(data) + len(footer)} bytes")
            if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
                raise _corrupt(path, index, "data CRC mismatch (the record data is damaged)")
            yield data
            index += 1


class TFRecordWriter:
    """Writes records in TFRecord framing, GZIP-compressed by default.

    >>> with TFRecordWriter(path) as writer:
    ...     writer.write(serialize_example(arrays, spec))
    """

    def __init__(self, path: str | Path, compression: str | None = "gzip", compresslevel: int = 6):
        if compression not in ("gzip", None):
            raise ValueError(f"compression must be 'gzip' or None, got {compression!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream: BinaryIO = (gzip.open(self.path, "wb", compresslevel=compresslevel)
                                  if compression == "gzip" else open(self.path, "wb"))
        self.count = 0

    def write(self, data: bytes) -> None:
        self._stream.write(frame_record(data))
        self.count += 1

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- tf.Example

_F = descriptor_pb2.FieldDescriptorProto


def _field(message, name: str, number: int, kind: int, label: int = _F.LABEL_OPTIONAL,
           type_name: str | None = None, packed: bool = False, oneof: int | None = None) -> None:
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name
    if packed:
        field.options.packed = True
    if oneof is not None:
        field.oneof_index = oneof


def _map_field(message, name: str, value_type: str) -> None:
    """``map<string, value_type> name = 1``: a repeated nested ``...Entry`` message."""
    entry_name = "".join(part.capitalize() for part in name.split("_")) + "Entry"
    entry = message.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name=value_type)
    _field(message, name, 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, type_name=f"{message.name}.{entry_name}")


def _feature_message(file, name: str, bytes_kind: int, bytes_type: str | None) -> None:
    message = file.message_type.add(name=name)
    message.oneof_decl.add(name="kind")
    _field(message, "bytes_list", 1, bytes_kind, type_name=bytes_type, oneof=0)
    _field(message, "float_list", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.FloatList", oneof=0)
    _field(message, "int64_list", 3, _F.TYPE_MESSAGE, type_name=".tensorflow.Int64List", oneof=0)


def _build_pool() -> descriptor_pool.DescriptorPool:
    feature = descriptor_pb2.FileDescriptorProto(
        name="tensorflow/core/example/feature.proto", package="tensorflow", syntax="proto3")
    _field(feature.message_type.add(name="BytesList"), "value", 1, _F.TYPE_BYTES, _F.LABEL_REPEATED)
    _field(feature.message_type.add(name="FloatList"), "value", 1, _F.TYPE_FLOAT, _F.LABEL_REPEATED, packed=True)
    _field(feature.message_type.add(name="Int64List"), "value", 1, _F.TYPE_INT64, _F.LABEL_REPEATED, packed=True)
    _feature_message(feature, "Feature", _F.TYPE_MESSAGE, ".tensorflow.BytesList")
    _map_field(feature.message_type.add(name="Features"), "feature", ".tensorflow.Feature")

    example = descriptor_pb2.FileDescriptorProto(
        name="tensorflow/core/example/example.proto", package="tensorflow", syntax="proto3",
        dependency=["tensorflow/core/example/feature.proto"])
    _field(example.message_type.add(name="Example"), "features", 1, _F.TYPE_MESSAGE,
           type_name=".tensorflow.Features")

    # The same wire format with bytes_list kept as raw bytes (a length-delimited
    # field reads the same as a sub-message): the fast route for 1-byte lists.
    raw = descriptor_pb2.FileDescriptorProto(
        name="emorl/data/raw_example.proto", package="emorl_raw", syntax="proto3",
        dependency=["tensorflow/core/example/feature.proto"])
    _feature_message(raw, "RawFeature", _F.TYPE_BYTES, None)
    _map_field(raw.message_type.add(name="RawFeatures"), "feature", ".emorl_raw.RawFeature")
    _field(raw.message_type.add(name="RawExample"), "features", 1, _F.TYPE_MESSAGE,
           type_name=".emorl_raw.RawFeatures")

    pool = descriptor_pool.DescriptorPool()
    for file in (feature, example, raw):
        pool.Add(file)
    return pool


_POOL = _build_pool()


def _message_class(full_name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


BytesList = _message_class("tensorflow.BytesList")
FloatList = _message_class("tensorflow.FloatList")
Int64List = _message_class("tensorflow.Int64List")
Feature = _message_class("tensorflow.Feature")
Features = _message_class("tensorflow.Features")
Example = _message_class("tensorflow.Example")
_RawFeature = _message_class("emorl_raw.RawFeature")
_RawExample = _message_class("emorl_raw.RawExample")


@dataclass(frozen=True)
class FixedLenFeature:
    """A feature of fixed shape, as ``tf.io.FixedLenFeature``.

    ``dtype`` is ``"bytes"`` (a bytes_list of one 1-byte string per element, decoded to
    uint8), ``"float32"`` (float_list) or ``"int64"`` (int64_list).
    """

    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


_KIND = {"bytes": "bytes_list", "float32": "float_list", "int64": "int64_list"}


def _decode_one_byte_strings(raw: bytes, name: str) -> np.ndarray:
    """Serialized BytesList of 1-byte strings -> uint8 array (decode_raw + squeeze)."""
    buffer = np.frombuffer(raw, np.uint8)
    if buffer.size % 3 == 0:
        triples = buffer.reshape(-1, 3)
        if (triples[:, 0] == 0x0A).all() and (triples[:, 1] == 0x01).all():
            return triples[:, 2].copy()
    try:
        values = BytesList.FromString(raw).value
    except DecodeError as error:
        raise DatasetError(f"feature {name!r}: not a valid BytesList ({error})") from error
    lengths = sorted({len(value) for value in values} - {1})
    if lengths:
        raise DatasetError(f"feature {name!r}: expected one 1-byte string per element (uint8 pixels), "
                           f"found strings of {lengths[:3]} bytes")
    return np.frombuffer(b"".join(values), np.uint8).copy()


def _parse_raw(data: bytes):
    try:
        return _RawExample.FromString(data).features.feature
    except DecodeError as error:
        raise DatasetError(f"not a serialized tf.Example ({error})") from error


def parse_example(data: bytes, spec: Mapping[str, FixedLenFeature]) -> dict[str, np.ndarray]:
    """Decode the features named in ``spec`` from one serialized tf.Example.

    Returns arrays of the spec's shapes: uint8 for ``bytes``, float32, int64. Features
    not in ``spec`` are ignored; a missing feature, a feature of another kind or with
    another number of elements raises DatasetError naming the feature.
    """
    features = _parse_raw(data)
    arrays = {}
    for name, want in spec.items():
        if name not in features:
            raise DatasetError(f"feature {name!r} is missing; the example has {sorted(features)}")
        feature = features[name]
        kind = feature.WhichOneof("kind")
        if kind != _KIND[want.dtype]:
            raise DatasetError(f"feature {name!r}: expected a {_KIND[want.dtype]}, found {kind or 'no value'}")
        if want.dtype == "bytes":
            values = _decode_one_byte_strings(feature.bytes_list, name)
        elif want.dtype == "float32":
            values = np.asarray(feature.float_list.value, np.float32)
        else:
            values = np.asarray(feature.int64_list.value, np.int64)
        if values.size != want.size:
            raise DatasetError(f"feature {name!r}: has {values.size} elements, expected {want.size} "
                               f"(shape {list(want.shape)})")
        arrays[name] = values.reshape(want.shape)
    return arrays


def feature_sizes(data: bytes) -> dict[str, tuple[str, int]]:
    """Kind and element count of every feature of a serialized tf.Example (for format checks)."""
    sizes = {}
    for name, feature in _parse_raw(data).items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            count = len(_decode_one_byte_strings(feature.bytes_list, name))
        elif kind is None:
            count = 0
        else:
            count = len(getattr(feature, kind).value)
        sizes[name] = (kind, count)
    return sizes


def serialize_example(arrays: Mapping[str, np.ndarray], spec: Mapping[str, FixedLenFeature]) -> bytes:
    """A serialized tf.Example holding ``arrays`` in the layout of ``spec`` (C order).

    Bytes features become one 1-byte string per uint8 element, as in the original files.
    """
    example = _RawExample()
    for name, want in spec.items():
        if name not in arrays:
            raise ValueError(f"array {name!r} missing; the format needs {sorted(spec)}")
        values = np.asarray(arrays[name])
        if values.shape != want.shape:
            raise ValueError(f"array {name!r} has shape {list(values.shape)}, expected {list(want.shape)}")
        feature = example.features.feature[name]
        if want.dtype == "bytes":
            if values.dtype != np.uint8:
                raise ValueError(f"array {name!r} must be uint8, got {values.dtype}")
            triples = np.empty((values.size, 3), np.uint8)
            triples[:, 0], triples[:, 1], triples[:, 2] = 0x0A, 0x01, values.ravel()
            feature.bytes_list = triples.tobytes()
        elif want.dtype == "float32":
            feature.float_list.value.extend(values.astype(np.float32).ravel().tolist())
        else:
            feature.int64_list.value.extend(values.astype(np.int64).ravel().tolist())
    return example.SerializeToString()


def write_examples(path: str | Path, examples: Iterable[Mapping[str, np.ndarray]],
                   spec: Mapping[str, FixedLenFeature], compression: str | None = "gzip") -> int:
    """Write each example of ``examples`` as a tf.Example record; return how many were written."""
    with TFRecordWriter(path, compression) as writer:
        for arrays in examples:
            writer.write(serialize_example(arrays, spec))
        return writer.count
