"""The one HDF5 layout for every dataset: the layout of the files the authors released.

``{split}/imgs``    uint8 [N, H, W, 3]
``{split}/masks``   uint8 [N, O, H, W, 1], values 0 or 255, object 0 = background
``{split}/factors`` float32 [N, O, F], last column = visibility (1 real entity, 0 padding)

Splits are any of ``train``, ``val``, ``test``. Files written by this project also
carry file attributes that say what they are (see :class:`FileAttributes`); the
authors' files have none, and are recognised by their shapes instead.

:func:`inspect` validates a file and returns what it holds; every problem raises
:class:`~emorl.errors.DatasetError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from emorl.errors import DatasetError

LAYOUT_VERSION = 1
SPLITS = ("train", "val", "test")
KEYS = ("imgs", "masks", "factors")

# The CLEVR crop of the paper (rows 29:221, columns 64:256 of the 240x320 frame).
CLEVR_FRAME = (240, 320)
CLEVR_CROP = (29, 221, 64, 256)

# Factor columns of each dataset, in file order; visibility is always last.
# Types: "continuous" or "categorical" (integer codes; 0 = background/padding where
# the original uses codes >= 1 for objects).
FACTORS: dict[str, tuple[tuple[str, str], ...]] = {
    "tetrominoes": (
        ("x", "continuous"),
        ("y", "continuous"),
        ("shape", "categorical"),
        ("color_r", "categorical"),
        ("color_g", "categorical"),
        ("color_b", "categorical"),
        ("visibility", "categorical"),
    ),
    "multi_dsprites": (
        ("x", "continuous"),
        ("y", "continuous"),
        ("shape", "categorical"),
        ("scale", "continuous"),
        ("orientation", "continuous"),
        ("color_r", "continuous"),
        ("color_g", "continuous"),
        ("color_b", "continuous"),
        ("visibility", "categorical"),
    ),
    "clevr": (
        ("x", "continuous"),
        ("y", "continuous"),
        ("z", "continuous"),
        ("rotation", "continuous"),
        ("size", "categorical"),
        ("material", "categorical"),
        ("shape", "categorical"),
        ("color", "categorical"),
        ("pixel_x", "continuous"),
        ("pixel_y", "continuous"),
        ("pixel_z", "continuous"),
        ("visibility", "categorical"),
    ),
}
# The authors' CLEVR files: the first 8 columns as above, visibility last (9 columns).
AUTHORS_CLEVR_FACTORS = FACTORS["clevr"][:8] + (("visibility", "categorical"),)

# Shapes of the benchmark: (image H, W, max entities incl. background).
DATASET_SHAPES = {
    "tetrominoes": (35, 35, 4),
    "multi_dsprites": (64, 64, 6),
    "clevr": (240, 320, 11),
}
# Dataset names a file may declare, and the factor family they use.
DATASET_FAMILY = {
    "tetrominoes": "tetrominoes",
    "multi_dsprites": "multi_dsprites",
    "multi_dsprites_textured": "multi_dsprites",
    "clevr": "clevr",
    "clevr6": "clevr",
    "clevr10": "clevr",
}


@dataclass
class FileAttributes:
    """What a file says about itself (written as HDF5 file attributes)."""

    dataset: str  # one of DATASET_FAMILY
    generator: str  # e.g. "emorl.data.generate.tetrominoes" or "tfrecord:<file name>"
    generator_version: str
    seed: int  # -1 when not generated
    factor_names: list[str]
    factor_types: list[str]
    crop: tuple[int, int, int, int] | None = None  # set when frames are stored pre-cropped
    extra: dict = field(default_factory=dict)  # free-form provenance (JSON-serialisable)

    def write(self, h5: h5py.File) -> None:
        h5.attrs["emorl_layout_version"] = LAYOUT_VERSION
        h5.attrs["dataset"] = self.dataset
        h5.attrs["generator"] = self.generator
        h5.attrs["generator_version"] = self.generator_version
        h5.attrs["seed"] = int(self.seed)
        h5.attrs["factor_names"] = json.dumps(list(self.factor_names))
        h5.attrs["factor_types"] = json.dumps(list(self.factor_types))
        if self.crop is not None:
            h5.attrs["crop"] = np.asarray(self.crop, dtype=np.int64)
        h5.attrs["extra"] = json.dumps(self.extra)


@dataclass
class SplitInfo:
    num_images: int
    image_shape: tuple[int, int, int]  # H, W, C
    mask_shape: tuple[int, int, int, int]  # O, H, W, 1


@dataclass
class FileInfo:
    """A validated file: what :func:`inspect` found."""

    path: Path
    dataset: str  # family: tetrominoes | multi_dsprites | clevr
    declared_dataset: str | None  # the file's own "dataset" attribute (e.g. "clevr6")
    splits: dict[str, SplitInfo]
    factor_names: list[str]
    factor_types: list[str]
    crop: tuple[int, int, int, int] | None
    attrs: dict

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise DatasetError(
                f"{self.path}: no split {name!r} (key '{name}/imgs'); the file has "
                f"{sorted(self.splits) or 'no splits'}"
            )
        return self.splits[name]


def _fail(path: Path, key: str, problem: str) -> DatasetError:
    return DatasetError(f"{path}: key '{key}': {problem}")


def _infer_family(path: Path, declared: str | None, image_shape, num_objects: int) -> str:
    if declared is not None:
        if declared not in DATASET_FAMILY:
            raise _fail(path, "attrs/dataset", f"unknown dataset {declared!r}; expected one of {sorted(DATASET_FAMILY)}")
        return DATASET_FAMILY[declared]
    height, width = image_shape[:2]
    for family, (h, w, o) in DATASET_SHAPES.items():
        if (height, width) == (h, w) and num_objects <= o:
            return family
    if num_objects == 11 or num_objects == 7:  # authors' CLEVR files at another resolution
        return "clevr"
    raise _fail(
        path,
        "imgs",
        f"cannot tell the dataset from images {height}x{width} with {num_objects} entities and no "
        "'dataset' attribute; expected 35x35 (tetrominoes), 64x64 (multi_dsprites) or a CLEVR file",
    )


def _default_factors(path: Path, family: str, num_columns: int) -> tuple[list[str], list[str]]:
    candidates = [FACTORS[family]]
    if family == "clevr":
        candidates.append(AUTHORS_CLEVR_FACTORS)
    for columns in candidates:
        if len(columns) == num_columns:
            return [c[0] for c in columns], [c[1] for c in columns]
    if num_columns < 1:
        raise _fail(path, "factors", "has no columns; expected at least the visibility column")
    # Unknown column set: keep the data usable, visibility last as in every known layout.
    names = [f"factor_{i}" for i in range(num_columns - 1)] + ["visibility"]
    return names, ["continuous"] * (num_columns - 1) + ["categorical"]


def inspect(path: str | Path) -> FileInfo:
    """Open ``path``, check the layout and return what it holds.

    Checks every split's keys, dtypes, ranks and that they agree in N, O, H, W; an empty
    split, a truncated file or a file that is not HDF5 raise :class:`DatasetError`.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"{path}: no such dataset file; make one with 'emorl data make NAME' or convert the "
            "original TFRecords with 'emorl data convert FILE'"
        )
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read as HDF5 ({error}); the file is truncated or corrupt: "
                           "regenerate or re-convert it") from error
    with h5:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
        splits: dict[str, SplitInfo] = {}
        factor_columns = None
        for split in SPLITS:
            if split not in h5:
                continue
            group = h5[split]
            for key in KEYS:
                if key not in group:
                    raise _fail(path, f"{split}/{key}", f"missing; a split needs {list(KEYS)}")
            imgs, masks, factors = group["imgs"], group["masks"], group["factors"]
            if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
                raise _fail(path, f"{split}/imgs", f"expected uint8 [N,H,W,3], found {imgs.dtype} {list(imgs.shape)}")
            n, h, w, _ = imgs.shape
            if n == 0:
                raise _fail(path, f"{split}/imgs", "the split is empty (N = 0)")
            if masks.ndim == 4:  # [N, O, H, W] without the trailing channel
                mask_shape = tuple(masks.shape[1:]) + (1,)
            elif masks.ndim == 5 and masks.shape[-1] == 1:
                mask_shape = tuple(masks.shape[1:])
            else:
                raise _fail(path, f"{split}/masks", f"expected [N,O,H,W,1], found {list(masks.shape)}")
            if masks.dtype not in (np.uint8, np.bool_):
                raise _fail(path, f"{split}/masks", f"expected uint8 with values 0/255, found {masks.dtype}")
            if masks.shape[0] != n:
                raise _fail(path, f"{split}/masks", f"has {masks.shape[0]} images, {split}/imgs has {n}")
            if factors.ndim != 3 or factors.shape[0] != n or factors.shape[1] != mask_shape[0]:
                raise _fail(
                    path,
                    f"{split}/factors",
                    f"expected [N={n}, O={mask_shape[0]}, F], found {list(factors.shape)}",
                )
            if factors.dtype.kind not in "fiu":
                raise _fail(path, f"{split}/factors", f"expected a numeric dtype, found {factors.dtype}")
            if factor_columns is not None and factors.shape[2] != factor_columns:
                raise _fail(path, f"{split}/factors", f"has {factors.shape[2]} columns, other splits have {factor_columns}")
            factor_columns = factors.shape[2]
            try:  # touching the last element finds truncated data early
                _ = imgs[n - 1, 0, 0, 0]
                _ = masks[n - 1]
            except (OSError, ValueError) as error:
                raise _fail(path, f"{split}", f"cannot read the last image ({error}); the file is truncated") from error
            splits[split] = SplitInfo(n, (h, w, 3), mask_shape)  # type: ignore[arg-type]
        if not splits:
            raise _fail(path, "/", f"no split found; expected one of {list(SPLITS)} with keys {list(KEYS)}")
        first = next(iter(splits.values()))
        declared = attrs.get("dataset")
        family = _infer_family(path, declared, first.image_shape, first.mask_shape[0])
        if "factor_names" in attrs:
            names = json.loads(attrs["factor_names"])
            types = json.loads(attrs["factor_types"])
            if len(names) != factor_columns:
                raise _fail(path, "attrs/factor_names", f"names {len(names)} columns, factors have {factor_columns}")
        else:
            names, types = _default_factors(path, family, factor_columns)
        crop = tuple(int(c) for c in attrs["crop"]) if "crop" in attrs else None
        return FileInfo(path, family, declared, splits, names, types, crop, attrs)  # type: ignore[arg-type]


_CHUNK_BYTES = 128 << 10


def _images_per_chunk(size: int, image_bytes: int, most: int) -> int:
    return max(1, min(size, most, _CHUNK_BYTES // image_bytes))


def _host() -> str:
    return socket.gethostname().replace("-", "_").replace(".", "_") or "host"


def remove_dead_partials(path: Path) -> list[Path]:
    """Delete ``path``'s partial files left by writers of this host whose process is gone
    (killed with SIGKILL, or a lost machine); partial files of live writers, or of other hosts
    sharing the folder, are left alone. Returns what was removed."""
    removed = []
    for partial in path.parent.glob(f"{path.name}.{_host()}-*.partial"):
        pid = partial.name[len(f"{path.name}.{_host()}-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class LayoutWriter:
    """Writes a file in the layout, split by split, chunk by chunk.

    >>> with LayoutWriter(path, attributes, {"train": 1000, "test": 320}, (35, 35), 4) as out:
    ...     out.write("train", 0, imgs, masks, factors)
    The file is written under a temporary name and renamed when closed without error,
    so an interrupted generation never leaves a file that looks complete.
    """

    def __init__(
        self,
        path: str | Path,
        attributes: FileAttributes,
        split_sizes: dict[str, int],
        image_hw: tuple[int, int],
        max_objects: int,
        compression: str | None = "gzip",
    ):
        self.path = Path(path)
        # A name of its own per writer: concurrent writers of the same file (e.g. trials on nodes
        # without a shared data folder) never write into one another's file; the rename is atomic.
        # Host and pid in the name: the partial file of a writer that was killed is removed by the next.
        self.partial = self.path.with_name(
            f"{self.path.name}.{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_partials(self.path)
        self.h5 = h5py.File(self.partial, "w")
        attributes.write(self.h5)
        height, width = image_hw
        num_factors = len(attributes.factor_names)
        options = {"compression": compression, "compression_opts": 4} if compression == "gzip" else {"compression": compression}
        self.written = {}
        for split, size in split_sizes.items():
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            group = self.h5.create_group(split)
            # Chunks of at most ~128 KB (one image per chunk for CLEVR frames): a shuffled
            # loader decompresses a whole chunk to read one image from it.
            group.create_dataset("imgs", (size, height, width, 3), np.uint8,
                                 chunks=(_images_per_chunk(size, height * width * 3, 32), height, width, 3),
                                 **options)
            group.create_dataset("masks", (size, max_objects, height, width, 1), np.uint8,
                                 chunks=(_images_per_chunk(size, max_objects * height * width, 8),
                                         max_objects, height, width, 1), **options)
            group.create_dataset("factors", (size, max_objects, num_factors), np.float32)
            self.written[split] = 0
        self.sizes = dict(split_sizes)

    def write(self, split: str, start: int, imgs: np.ndarray, masks: np.ndarray, factors: np.ndarray) -> None:
        """Write images ``start:start+len(imgs)`` of ``split``; masks may be bool, 0/1 or 0/255."""
        group = self.h5[split]
        end = start + len(imgs)
        masks = np.asarray(masks)
        if masks.ndim == 4:
            masks = masks[..., None]
        if masks.dtype == np.bool_ or masks.max(initial=0) <= 1:
            masks = masks.astype(np.uint8) * 255
        group["imgs"][start:end] = imgs
        group["masks"][start:end] = masks
        group["factors"][start:end] = factors
        self.written[split] += len(imgs)

    def close(self, ok: bool = True) -> None:
        self.h5.close()
        if ok:
            incomplete = {s: n for s, n in self.written.items() if n != self.sizes[s]}
            if incomplete:
                raise RuntimeError(f"{self.path}: splits not fully written: {incomplete}")
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "LayoutWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
