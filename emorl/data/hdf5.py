"""A torch Dataset over one split of a file in the HDF5 layout (see :mod:`emorl.data.layout`).

Each item is a dict:
  ``image``      float32 [3, S, S] in [-1, 1] (what the encoder sees)
  ``masks``      uint8 [O, Hm, Wm] in {0, 1}, entity 0 = background (used for scoring)
  ``visibility`` float32 [O] (1 real entity, 0 padding)
  ``factors``    float32 [O, F], columns named by :attr:`MultiObjectDataset.factor_names`
  ``index``      int64, the image's index in the split

CLEVR follows the paper: the 240x320 frame is cropped to rows 29:221, columns 64:256
(images and masks), unless the file says it was stored pre-cropped (attribute ``crop``);
the image is then resized to ``image_size`` (default 96) with bilinear, antialiased
interpolation, while the masks keep the 192x192 crop. The sprites sets are not resized
unless ``image_size`` asks for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from emorl.data import layout
from emorl.errors import ConfigError, DatasetError

# Default image side the model sees, per family; None = as stored.
DEFAULT_IMAGE_SIZE = {"tetrominoes": None, "multi_dsprites": None, "clevr": 96}
# Chunk cache per opened dataset: holds a few decompressed chunks of big CLEVR frames.
_CHUNK_CACHE_BYTES = 32 << 20


def crop_box(info: layout.FileInfo, image_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The (top, bottom, left, right) window to cut from stored frames, or None for the whole frame.

    Only CLEVR frames of 240x320 that the file does not declare pre-cropped are cut.
    """
    if info.dataset != "clevr" or info.crop is not None:
        return None
    if tuple(image_hw) == layout.CLEVR_FRAME:
        return layout.CLEVR_CROP
    return None


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (before any resize)."""
    return image.float().div_(255.0)


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], what the encoder sees (in place)."""
    return image.mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)


def pixel_values() -> torch.Tensor:
    """The model-range value of each of the 256 uint8 levels [256], computed by exactly the
    operations :meth:`MultiObjectDataset.__getitem__` applies when it does not resize: indexing
    it with a split's uint8 pixels gives its images bit for bit (used on the GPU)."""
    return to_model_range(to_unit_range(torch.arange(256, dtype=torch.uint8)))


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a float [3, H, W] image to [3, size, size]."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


class MultiObjectDataset(Dataset):
    """One split of a dataset file; validates the file on construction.

    The HDF5 file is opened lazily, once per process (DataLoader workers each open their
    own handle; a handle is never shared across fork).
    """

    def __init__(self, path: str | Path, split: str = "train", image_size: int | None = None):
        self.path = Path(path).resolve()
        self.info = layout.inspect(self.path)
        self.split = split
        split_info = self.info.split(split)
        self.num_images = split_info.num_images
        self.num_objects = split_info.mask_shape[0]
        stored_hw = split_info.image_shape[:2]
        self.crop = crop_box(self.info, stored_hw)
        top, bottom, left, right = self.crop or (0, stored_hw[0], 0, stored_hw[1])
        self.mask_hw = (bottom - top, right - left)
        if image_size is None:
            image_size = DEFAULT_IMAGE_SIZE[self.info.dataset]
        if image_size is not None:
            if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
                raise ConfigError(f"image_size must be a positive whole number or None, got {image_size!r}")
            if self.mask_hw[0] != self.mask_hw[1]:
                raise ConfigError(
                    f"{self.path}: image_size={image_size} resizes to a square, but the frames "
                    f"{'after the crop ' if self.crop else ''}are {self.mask_hw[0]}x{self.mask_hw[1]}"
                )
        self.image_size = image_size
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}

    # What the file holds.
    @property
    def dataset(self) -> str:
        """The factor family: tetrominoes, multi_dsprites or clevr."""
        return self.info.dataset

    @property
    def factor_names(self) -> list[str]:
        return list(self.info.factor_names)

    @property
    def factor_types(self) -> list[str]:
        return list(self.info.factor_types)

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the returned images."""
        return (self.image_size, self.image_size) if self.image_size else self.mask_hw

    def __len__(self) -> int:
        return self.num_images

    def _arrays(self) -> dict[str, h5py.Dataset]:
        """The split's datasets, opened once per process (their chunk caches live with them)."""
        if self._h5 is None or self._pid != os.getpid():
            try:
                self._h5 = h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
            except OSError as error:
                raise DatasetError(f"{self.path}: cannot be opened any more ({error})") from error
            self._pid = os.getpid()
            self._datasets = {key: self._h5[self.split][key] for key in layout.KEYS}
        return self._datasets

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"], state["_pid"], state["_datasets"] = None, None, {}  # never pickle open handles
        return state

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._pid, self._datasets = None, None, {}

    @property
    def stored_as_returned(self) -> bool:
        """Whether the returned images are the stored pixels unchanged in size (no crop, no resize)."""
        stored_hw = self.info.split(self.split).image_shape[:2]
        return self.crop is None and (self.image_size is None or (self.image_size,) * 2 == tuple(stored_hw))

    def images_uint8(self) -> np.ndarray:
        """Every image of the split as stored, uint8 [N, H, W, 3] (only when
        :attr:`stored_as_returned`; see :func:`pixel_values`)."""
        if not self.stored_as_returned:
            raise DatasetError(f"{self.path}: the {self.split} images are cropped or resized when read; "
                               "they cannot be used as stored")
        try:
            return np.asarray(self._arrays()["imgs"][...], dtype=np.uint8)
        except (OSError, ValueError) as error:
            raise DatasetError(f"{self.path}: key '{self.split}': cannot read the images ({error})") from error

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images of split {self.split!r}")
        arrays = self._arrays()
        top, bottom, left, right = self.crop or (0, None, 0, None)
        try:
            image = arrays["imgs"][index, top:bottom, left:right]
            masks = arrays["masks"][index, :, top:bottom, left:right]
            factors = arrays["factors"][index]
        except (OSError, ValueError) as error:
            raise DatasetError(f"{self.path}: key '{self.split}': cannot read image {index} ({error})") from error
        if masks.ndim == 4:  # [O, H, W, 1] as the layout stores them
            masks = masks[..., 0]
        image = to_unit_range(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        if self.image_size is not None:
            image = resize_image(image, self.image_size)
        factors = torch.from_numpy(np.asarray(factors, dtype=np.float32))
        return {
            "image": to_model_range(image),
            "masks": torch.from_numpy((masks > 0).astype(np.uint8)),
            "visibility": factors[:, -1].clone(),
            "factors": factors,
            "index": torch.tensor(index, dtype=torch.int64),
        }


def _visible_counts(path: Path, split: str, limit: int = 1000) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        visibility = h5[split]["factors"][:limit, :, -1]
    return (visibility > 0.5).sum(axis=1) - 1  # objects, without the background


def describe(path: str | Path) -> str:
    """A few lines on what a dataset file holds (used by ``emorl data show``)."""
    info = layout.inspect(path)
    attrs = info.attrs
    declared = f" (declared {info.declared_dataset})" if info.declared_dataset else ""
    lines = [f"{info.path}", f"  dataset: {info.dataset}{declared}"]
    if "generator" in attrs:
        version, seed = attrs.get("generator_version"), attrs.get("seed")
        lines.append(f"  made by: {attrs['generator']} version {version} seed {seed}")
        extra = json.loads(attrs.get("extra", "{}") or "{}")
        if extra.get("requested_sizes"):
            lines.append(f"  requested sizes: {extra['requested_sizes']}")
    else:
        lines.append("  no attributes: read as the authors' layout")
    if info.crop is not None:
        lines.append(f"  stored pre-cropped: rows {info.crop[0]}:{info.crop[1]}, cols {info.crop[2]}:{info.crop[3]}")
    for split, split_info in info.splits.items():
        counts = _visible_counts(info.path, split)
        values, numbers = np.unique(counts, return_counts=True)
        histogram = ", ".join(f"{v}: {n}" for v, n in zip(values, numbers))
        height, width, _ = split_info.image_shape
        lines.append(
            f"  {split}: {split_info.num_images} images {height}x{width}, {split_info.mask_shape[0]} entities; "
            f"objects per image in the first {len(counts)}: {{{histogram}}}"
        )
    factors = ", ".join(f"{n} ({t[:4]})" for n, t in zip(info.factor_names, info.factor_types))
    lines.append(f"  factors: {factors}")
    return "\n".join(lines)
