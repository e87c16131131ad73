"""TFRecord framing, tf.Example parsing and conversion of the original files to HDF5.

Every original-format file here is written by the test itself (GZIP, real tf.Example
protobufs), a few records each.
"""

from __future__ import annotations

import gzip
import json
import struct

import h5py
import numpy as np
import pytest

from emorl.data import convert
from emorl.data.convert import SOURCE_FORMATS, convert_to_hdf5, write_source_file
from emorl.data.layout import FACTORS, inspect
from emorl.data.tfrecord import (Example, FixedLenFeature, TFRecordWriter, masked_crc32c, parse_example,
                                 read_records, serialize_example)
from emorl.errors import ConfigError, DatasetError


# ------------------------------------------------------------ CRC-32C from its definition

def crc32c_by_definition(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), no library."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked_by_definition(data: bytes) -> int:
    crc = crc32c_by_definition(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def hand_framed(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", masked_by_definition(length)) + payload
            + struct.pack("<I", masked_by_definition(payload)))


def write_gzip(path, data: bytes, level: int = 6):
    path.write_bytes(gzip.compress(data, compresslevel=level, mtime=0))
    return path


# ------------------------------------------------------------ framing and CRCs

def test_masked_crc_agrees_with_the_crc32c_definition():
    assert crc32c_by_definition(b"123456789") == 0xE3069283  # the standard check value
    # mask(0xE3069283) = rotr15(0xE3069283) + 0xA282EAD8 mod 2^32, worked by hand:
    # rotr15 = 0x2507C60D, + 0xA282EAD8 = 0xC78AB0E5
    assert masked_crc32c(b"123456789") == 0xC78AB0E5
    header = struct.pack("<Q", 3_225_858)
    assert masked_crc32c(header) == masked_by_definition(header)


def test_reader_and_writer_agree_with_hand_built_records(tmp_path):
    payloads = [b"", b"hello", bytes(range(256)) * 3]
    framed = b"".join(hand_framed(p) for p in payloads)
    source = write_gzip(tmp_path / "hand.tfrecords", framed)
    assert list(read_records(source)) == payloads

    written = tmp_path / "written.tfrecords"
    with TFRecordWriter(written) as writer:
        for payload in payloads:
            writer.write(payload)
    assert gzip.decompress(written.read_bytes()) == framed

    plain = tmp_path / "plain.tfrecords"
    plain.write_bytes(framed)
    assert list(read_records(plain, compression=None)) == payloads


def _three_records():
    return [bytes([i]) * 100 for i in (7, 8, 9)]


def test_flipped_data_byte_names_file_and_record(tmp_path):
    framed = bytearray(b"".join(hand_framed(p) for p in _three_records()))
    record_size = 12 + 100 + 4
    framed[record_size + 12 + 50] ^= 0x01  # inside the data of record 1
    source = write_gzip(tmp_path / "flipped.tfrecords", bytes(framed))
    records = read_records(source)
    assert next(records) == _three_records()[0]
    with pytest.raises(DatasetError, match=r"flipped\.tfrecords: record 1 \(0-based\): data CRC mismatch"):
        next(records)


def test_flipped_length_byte_names_file_and_record(tmp_path):
    framed = bytearray(b"".join(hand_framed(p) for p in _three_records()))
    framed[2 * (12 + 100 + 4) + 1] ^= 0x40  # the length of record 2
    source = write_gzip(tmp_path / "header.tfrecords", bytes(framed))
    with pytest.raises(DatasetError, match=r"header\.tfrecords: record 2 \(0-based\): length CRC mismatch"):
        list(read_records(source))


def test_flipped_byte_of_the_compressed_stream_is_reported(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "stream.tfrecords"
    with TFRecordWriter(source) as writer:
        for _ in range(4):
            writer.write(rng.integers(0, 4, 2000, dtype=np.uint8).tobytes())
    damaged = bytearray(source.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    source.write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match=r"stream\.tfrecords: record \d \(0-based\)"):
        list(read_records(source))


def test_truncated_gzip_file_names_file_and_record(tmp_path):
    payloads = [np.random.default_rng(i).integers(0, 256, 1000, dtype=np.uint8).tobytes() for i in range(4)]
    compressed = gzip.compress(b"".join(hand_framed(p) for p in payloads), compresslevel=0, mtime=0)
    # Level 0: a 10-byte GZIP header, a 5-byte stored-block header, then the framed records.
    cut = 10 + 5 + 2 * (12 + 1000 + 4) + 500  # in the middle of record 2's data
    source = tmp_path / "cut.tfrecords"
    source.write_bytes(compressed[:cut])
    with pytest.raises(DatasetError, match=r"cut\.tfrecords: record 2 \(0-based\): cannot decompress"):
        list(read_records(source))


def test_truncated_record_inside_a_complete_gzip_stream(tmp_path):
    framed = b"".join(hand_framed(p) for p in _three_records())
    source = write_gzip(tmp_path / "short.tfrecords", framed[:-30])
    with pytest.raises(DatasetError, match=r"short\.tfrecords: record 2 \(0-based\): truncated"):
        list(read_records(source))
    write_gzip(source, framed[: 2 * 116 + 5])  # a partial header
    with pytest.raises(DatasetError, match=r"record 2 \(0-based\): truncated: the header has 5 of 12"):
        list(read_records(source))


def test_not_a_gzip_file(tmp_path):
    source = tmp_path / "plain.tfrecords"
    source.write_bytes(hand_framed(b"abc"))
    with pytest.raises(DatasetError, match="plain.tfrecords: not a GZIP file"):
        list(read_records(source))


# ------------------------------------------------------------ tf.Example

SMALL_SPEC = {
    "image": FixedLenFeature((2, 3, 3), "bytes"),
    "x": FixedLenFeature((4,), "float32"),
    "count": FixedLenFeature((2,), "int64"),
}


def _small_arrays():
    return {"image": np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 13,
            "x": np.array([0.5, -1.25, 3e-8, 7.0], np.float32),
            "count": np.array([3, -2**40], np.int64)}


def test_written_examples_are_real_tf_examples():
    arrays = _small_arrays()
    example = Example.FromString(serialize_example(arrays, SMALL_SPEC))
    features = example.features.feature
    assert sorted(features) == ["count", "image", "x"]
    assert features["image"].WhichOneof("kind") == "bytes_list"
    assert list(features["image"].bytes_list.value) == [bytes([v]) for v in arrays["image"].ravel()]
    assert np.array(features["x"].float_list.value, np.float32).tobytes() == arrays["x"].tobytes()
    assert list(features["count"].int64_list.value) == [3, -2**40]


def test_examples_built_with_the_full_messages_parse_identically():
    arrays = _small_arrays()
    example = Example()
    example.features.feature["image"].bytes_list.value.extend(bytes([v]) for v in arrays["image"].ravel())
    example.features.feature["x"].float_list.value.extend(arrays["x"].tolist())
    example.features.feature["count"].int64_list.value.extend(arrays["count"].tolist())
    example.features.feature["ignored"].float_list.value.append(1.0)
    parsed = parse_example(example.SerializeToString(), SMALL_SPEC)
    assert sorted(parsed) == ["count", "image", "x"]
    for name, want in arrays.items():
        assert parsed[name].dtype == want.dtype and parsed[name].tobytes() == want.tobytes()

    # An unknown field inside the BytesList breaks the byte-triple pattern: the
    # general BytesList route must give the same pixels.
    example.features.feature["image"].bytes_list.MergeFromString(b"\x10\x05")
    assert parse_example(example.SerializeToString(), SMALL_SPEC)["image"].tobytes() == arrays["image"].tobytes()


def test_bad_examples_name_the_feature():
    arrays = _small_arrays()
    example = Example.FromString(serialize_example(arrays, SMALL_SPEC))
    with pytest.raises(DatasetError, match=r"feature 'y' is missing; the example has \['count', 'image', 'x'\]"):
        parse_example(example.SerializeToString(), {"y": FixedLenFeature((4,), "float32")})
    with pytest.raises(DatasetError, match="feature 'x': expected a bytes_list, found float_list"):
        parse_example(example.SerializeToString(), {"x": FixedLenFeature((4,), "bytes")})
    with pytest.raises(DatasetError, match=r"feature 'x': has 4 elements, expected 6 \(shape \[2, 3\]\)"):
        parse_example(example.SerializeToString(), {"x": FixedLenFeature((2, 3), "float32")})
    # One 4-byte string that looks like two byte triples 0A 04 00 | 0A 00 00: decoding
    # it as two pixels would pass the element count; it must be refused.
    example.features.feature["pair"].bytes_list.value.append(b"\x00\x0a\x00\x00")
    with pytest.raises(DatasetError, match=r"feature 'pair': expected one 1-byte string .* found strings of \[4\]"):
        parse_example(example.SerializeToString(), {"pair": FixedLenFeature((2,), "bytes")})
    example.features.feature["image"].bytes_list.value.append(b"ab")
    with pytest.raises(DatasetError, match=r"feature 'image': expected one 1-byte string .* found strings of \[2\]"):
        parse_example(example.SerializeToString(), SMALL_SPEC)
    with pytest.raises(DatasetError, match="not a serialized tf.Example"):
        parse_example(b"\xff\xff\xff", SMALL_SPEC)


# ------------------------------------------------------------ original-format datasets

def tetrominoes_records(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    records = []
    for index in range(count):
        masks = np.zeros((4, 35, 35, 1), np.uint8)
        for entity in range(4):
            masks[entity, entity * 8:(entity + 1) * 8, index:index + 5] = 255
        records.append({
            "image": rng.integers(0, 256, (35, 35, 3), dtype=np.uint8),
            "mask": masks,
            "x": rng.random(4, dtype=np.float32) * 35,
            "y": rng.random(4, dtype=np.float32) * 35,
            "shape": rng.integers(0, 19, 4).astype(np.float32),
            "color": rng.integers(0, 2, (4, 3)).astype(np.float32),
            "visibility": np.array([1, 1, 1, 1], np.float32),
        })
    return records


def multi_dsprites_records(count: int, entities: int = 6, channels: int = 3) -> list[dict[str, np.ndarray]]:
    """Entity k covers rows 10k..10k+9 (k + 1 rows in record 1): masks that differ per entity."""
    rng = np.random.default_rng(2)
    records = []
    for index in range(count):
        mask = np.zeros((64, 64, entities, 1), np.uint8)  # entity fastest, as stored
        for entity in range(entities):
            mask[10 * entity:10 * entity + 10, 2 * index:2 * index + 20 + entity, entity] = 255
        records.append({
            "image": rng.integers(0, 256, (64, 64, channels), dtype=np.uint8),
            "mask": mask,
            **{name: rng.random(entities, dtype=np.float32)
               for name in ("x", "y", "shape", "scale", "orientation", "visibility")},
            "color": rng.random((entities, channels), dtype=np.float32),
        })
    return records


def clevr_records(visible_counts: list[int], gap_in: int | None = None) -> list[dict[str, np.ndarray]]:
    """CLEVR records with the given numbers of visible entities (background included).

    The image encodes the record index so that converted images reveal their source;
    record ``gap_in`` has a padding entity between visible ones.
    """
    rows, cols = np.meshgrid(np.arange(240), np.arange(320), indexing="ij")
    records = []
    for index, visible in enumerate(visible_counts):
        visibility = np.zeros(11, np.float32)
        visibility[:visible] = 1
        if index == gap_in:
            visibility[[visible - 1, visible]] = [0, 1]
        mask = np.zeros((11, 240, 320, 1), np.uint8)
        for entity in np.flatnonzero(visibility):
            mask[entity, :, 29 * entity:29 * entity + 29] = 255
        image = np.stack([(rows + index) % 256, (cols * 3) % 256, np.full_like(rows, index)], axis=-1)
        codes = np.where(visibility > 0, np.arange(11) % 3 + 1, 0).astype(np.uint8)
        codes[0] = 0  # the background has no categorical codes
        records.append({
            "image": image.astype(np.uint8),
            "mask": mask,
            "x": np.linspace(-3, 3, 11, dtype=np.float32) * visibility,
            "y": np.full(11, index, np.float32),
            "z": np.full(11, 0.35, np.float32) * visibility,
            "pixel_coords": np.arange(33, dtype=np.float32).reshape(11, 3) + index,
            "rotation": np.arange(11, dtype=np.float32) * 30,
            "size": codes, "material": codes % 2 + (codes > 0), "shape": codes, "color": (codes * 2).astype(np.uint8),
            "visibility": visibility,
        })
    return records


def read_split(path, split):
    with h5py.File(path, "r") as h5:
        return h5[split]["imgs"][()], h5[split]["masks"][()], h5[split]["factors"][()]


def file_extra(path):
    with h5py.File(path, "r") as h5:
        return json.loads(h5.attrs["extra"])


def test_tetrominoes_convert_back_to_identical_arrays(tmp_path):
    records = tetrominoes_records(7)
    source = tmp_path / "tetrominoes_train.tfrecords"
    assert write_source_file(source, "tetrominoes", records) == 7
    output = convert_to_hdf5(source, tmp_path / "out" / "tetrominoes.h5", "tetrominoes",
                                      train=4, test=2, progress=False)
    assert output == (tmp_path / "out" / "tetrominoes.h5").absolute()
    for split, chosen in (("train", records[:4]), ("test", records[4:6])):
        imgs, masks, factors = read_split(output, split)
        assert imgs.tobytes() == np.stack([r["image"] for r in chosen]).tobytes()
        assert masks.shape == (len(chosen), 4, 35, 35, 1)
        assert masks.tobytes() == np.stack([r["mask"] for r in chosen]).tobytes()
        expected = np.stack([np.stack([r["x"], r["y"], r["shape"], *r["color"].T, r["visibility"]], -1)
                             for r in chosen])
        assert factors.dtype == np.float32 and factors.tobytes() == expected.tobytes()
    info = inspect(output)
    assert info.declared_dataset == "tetrominoes" and info.crop is None
    assert info.factor_names == [name for name, _ in FACTORS["tetrominoes"]]
    extra = file_extra(output)
    assert extra["source_file"] == "tetrominoes_train.tfrecords"
    assert extra["source_bytes"] == source.stat().st_size
    assert extra["records_read"] == 6 and extra["record_ranges"] == {"train": [0, 3], "test": [4, 5]}


def test_multi_dsprites_entity_fastest_masks_are_transposed(tmp_path):
    records = multi_dsprites_records(3)
    source = tmp_path / "multi_dsprites_colored_on_grayscale.tfrecords"
    write_source_file(source, "multi_dsprites_colored_on_grayscale", records)
    output = convert_to_hdf5(source, tmp_path / "md.h5", "multi_dsprites", train=2, test=1, progress=False)
    imgs, masks, factors = read_split(output, "train")
    assert masks.shape == (2, 6, 64, 64, 1)
    for image_index in range(2):
        for entity in range(6):  # hand check: entity k is the band of rows 10k..10k+9
            rows, cols = np.nonzero(masks[image_index, entity, :, :, 0])
            assert set(rows) == set(range(10 * entity, 10 * entity + 10))
            assert set(cols) == set(range(2 * image_index, 2 * image_index + 20 + entity))
    assert masks.tobytes() == np.stack([np.moveaxis(r["mask"], 2, 0) for r in records[:2]]).tobytes()
    assert imgs.tobytes() == np.stack([r["image"] for r in records[:2]]).tobytes()
    r = records[0]
    expected = np.stack([r["x"], r["y"], r["shape"], r["scale"], r["orientation"], *r["color"].T,
                         r["visibility"]], -1)
    assert factors[0].tobytes() == expected.tobytes()
    assert file_extra(output)["source_format"] == "multi_dsprites_colored_on_grayscale"


def test_multi_dsprites_binarized_variant_is_detected(tmp_path):
    records = multi_dsprites_records(2, entities=4, channels=1)
    source = tmp_path / "multi_dsprites_binarized.tfrecords"
    write_source_file(source, "multi_dsprites_binarized", records)
    output = convert_to_hdf5(source, tmp_path / "bin.h5", "multi_dsprites", train=2, test=0, progress=False)
    imgs, masks, factors = read_split(output, "train")
    assert imgs.shape == (2, 64, 64, 3) and masks.shape == (2, 4, 64, 64, 1)
    for channel in range(3):  # the gray image and colour fill the three channels alike
        assert imgs[..., channel].tobytes() == np.stack([r["image"][..., 0] for r in records]).tobytes()
        assert factors[:, :, 5 + channel].tobytes() == np.stack([r["color"][:, 0] for r in records]).tobytes()
    assert file_extra(output)["source_format"] == "multi_dsprites_binarized"
    with h5py.File(output, "r") as h5:
        assert "test" not in h5


CLEVR_COUNTS = [4, 8, 7, 11, 5, 9, 7, 10, 4]  # visible entities per record, background included


@pytest.fixture(scope="module")
def clevr_source(tmp_path_factory):
    records = clevr_records(CLEVR_COUNTS, gap_in=4)
    source = tmp_path_factory.mktemp("clevr") / "clevr_with_masks_train.tfrecords"
    write_source_file(source, "clevr_with_masks", records)
    return source, records


def _clevr_factors(record):
    return np.stack([record[k] for k in ("x", "y", "z", "rotation", "size", "material", "shape", "color")]
                    + list(record["pixel_coords"].T) + [record["visibility"]], -1).astype(np.float32)


def test_clevr6_filter_and_splits_pick_the_expected_records(clevr_source, tmp_path):
    source, records = clevr_source
    output = convert_to_hdf5(source, tmp_path / "clevr6.h5", "clevr6", train=2, test=2, progress=False)
    top, bottom, left, right = 29, 221, 64, 256  # the paper's crop, written out
    # <= 7 visible entities: records 0, 2, 4 (whose gap must not hide its 5th entity), 6, 8.
    for split, chosen in (("train", [0, 2]), ("test", [4, 6])):
        imgs, masks, factors = read_split(output, split)
        assert imgs.shape == (2, 192, 192, 3) and masks.shape == (2, 11, 192, 192, 1)
        assert list(imgs[:, 0, 0, 2]) == chosen  # the blue channel holds the record index
        assert imgs.tobytes() == np.stack([records[i]["image"][top:bottom, left:right] for i in chosen]).tobytes()
        assert masks.tobytes() == np.stack([records[i]["mask"][:, top:bottom, left:right] for i in chosen]).tobytes()
        assert factors.tobytes() == np.stack([_clevr_factors(records[i]) for i in chosen]).tobytes()
    info = inspect(output)
    assert info.declared_dataset == "clevr6" and info.crop == (29, 221, 64, 256)
    assert info.factor_names == [name for name, _ in FACTORS["clevr"]]
    extra = file_extra(output)
    assert extra["records_read"] == 7 and extra["record_ranges"] == {"train": [0, 2], "test": [4, 6]}


def test_clevr10_takes_the_first_records_with_7_to_10_objects(clevr_source, tmp_path):
    source, records = clevr_source
    output = convert_to_hdf5(source, tmp_path / "clevr10.h5", "clevr10", test=3, crop=False, progress=False)
    with h5py.File(output, "r") as h5:
        assert list(h5) == ["test"] and "crop" not in h5.attrs
    imgs, masks, factors = read_split(output, "test")
    assert imgs.shape == (3, 240, 320, 3)
    assert list(imgs[:, 0, 0, 2]) == [1, 3, 5]
    assert imgs.tobytes() == np.stack([records[i]["image"] for i in (1, 3, 5)]).tobytes()
    assert masks.tobytes() == np.stack([records[i]["mask"] for i in (1, 3, 5)]).tobytes()
    assert factors.tobytes() == np.stack([_clevr_factors(records[i]) for i in (1, 3, 5)]).tobytes()
    assert file_extra(output)["record_ranges"] == {"test": [1, 5]}


def test_too_few_records_fails_and_leaves_no_file(clevr_source, tmp_path):
    source, _ = clevr_source
    output = tmp_path / "clevr10.h5"
    with pytest.raises(DatasetError, match=r"holds 9 records, 4 of them records with 7 to 10 objects .*"
                                           r"5 images were asked for \(5 test\)"):
        convert_to_hdf5(source, output, "clevr10", test=5, progress=False)
    assert not output.exists() and not list(output.parent.glob("clevr10.h5.*partial"))


def test_too_few_sprite_records_says_how_many_there_are(tmp_path):
    source = tmp_path / "tetrominoes_train.tfrecords"
    write_source_file(source, "tetrominoes", tetrominoes_records(5))
    with pytest.raises(DatasetError, match=r"tetrominoes_train\.tfrecords: holds 5 records; 6 images were asked "
                                           r"for \(4 train \+ 2 test\): ask for fewer"):
        convert_to_hdf5(source, tmp_path / "t.h5", "tetrominoes", train=4, test=2, progress=False)
    assert list(tmp_path.iterdir()) == [source]


def test_corrupt_record_during_conversion_leaves_no_file(tmp_path):
    source = tmp_path / "tetrominoes_train.tfrecords"
    write_source_file(source, "tetrominoes", tetrominoes_records(3))
    framed = bytearray(gzip.decompress(source.read_bytes()))
    framed[-10] ^= 0x01  # in the data of the last record
    write_gzip(source, bytes(framed))
    output = tmp_path / "t.h5"
    with pytest.raises(DatasetError, match=r"tetrominoes_train\.tfrecords: record 2 \(0-based\): data CRC"):
        convert_to_hdf5(source, output, "tetrominoes", train=2, test=1, progress=False)
    assert list(tmp_path.iterdir()) == [source]


def test_wrong_file_for_the_dataset(tmp_path):
    source = tmp_path / "tetrominoes_train.tfrecords"
    write_source_file(source, "tetrominoes", tetrominoes_records(1))
    with pytest.raises(DatasetError, match=r"record 0 \(0-based\) is not a clevr_with_masks example: "
                                           r"feature 'image': has 3675 elements, expected 230400 .*--dataset clevr6"):
        convert_to_hdf5(source, tmp_path / "c.h5", "clevr6", train=1, test=0, progress=False)
    with pytest.raises(DatasetError, match=r"'mask' feature of 4900 elements.*--dataset multi_dsprites"):
        convert_to_hdf5(source, tmp_path / "m.h5", "multi_dsprites", train=1, test=0, progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset 'clevr' cannot be converted; expected one of "
                                          r"\['clevr10', 'clevr6', 'multi_dsprites', 'tetrominoes'\]"):
        convert_to_hdf5(tmp_path / "x", tmp_path / "y.h5", "clevr")
    with pytest.raises(ConfigError, match="train: expected a number of images >= 0, got -1"):
        convert_to_hdf5(tmp_path / "x", tmp_path / "y.h5", "tetrominoes", train=-1)
    with pytest.raises(ConfigError, match="train and test are both 0"):
        convert_to_hdf5(tmp_path / "x", tmp_path / "y.h5", "clevr10", test=0)
    with pytest.raises(DatasetError, match=r"missing\.tfrecords: no such TFRecord file; .*gs://multi-object"):
        convert_to_hdf5(tmp_path / "missing.tfrecords", tmp_path / "y.h5", "tetrominoes")


def test_every_format_maps_onto_the_layout_factor_columns():
    # Layout column -> (feature, index along its last axis), written out per channel.
    suffix = {"r": 0, "g": 1, "b": 2, "x": 0, "y": 1, "z": 2}
    for fmt in SOURCE_FORMATS.values():
        columns = [name for name, _ in FACTORS[fmt.family]]
        assert len(fmt.factor_sources) == len(columns)
        for (feature, index), column in zip(fmt.factor_sources, columns):
            if column.startswith("color_"):
                expected = ("color", suffix[column[-1]] if fmt.channels == 3 else 0)
            elif column.startswith("pixel_"):
                expected = ("pixel_coords", suffix[column[-1]])
            else:
                expected = (column, None)
            assert (feature, index) == expected, (fmt.name, column)
            assert feature in fmt.features
    def entities(count):
        return np.array([1.0] * count + [0.0] * (11 - count), np.float32)

    assert [convert.DATASETS["clevr6"].selects(entities(n)) for n in range(1, 12)] == [True] * 7 + [False] * 4
    assert [convert.DATASETS["clevr10"].selects(entities(n)) for n in range(1, 12)] == [False] * 7 + [True] * 4
