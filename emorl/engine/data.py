"""The data side of training: finding (or generating) the file, and resumable loaders."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from emorl.data.hdf5 import MultiObjectDataset, pixel_values
from emorl.errors import ConfigError, DatasetError


def dataset_file(data_cfg, progress: bool = True) -> Path:
    """The HDF5 file of ``data_cfg``: ``data.path`` if given, else the generated set for
    (name, generation seed, sizes), generated now if missing and allowed."""
    if data_cfg.get("path"):
        path = Path(data_cfg["path"]).expanduser().resolve()
        if not path.exists():
            raise DatasetError(f"{path}: data.path does not exist; fix the path, or drop data.path to use "
                               f"the generated {data_cfg['name']} set")
        return path
    from emorl.data.generate.common import load_generator, make_or_reuse, resolve_sizes
    from emorl.data.paths import default_generated_path

    sizes = {"train": data_cfg.get("train_size"), "test": data_cfg.get("test_size")}
    if not data_cfg.get("generate_if_missing", True):
        spec, _ = load_generator(data_cfg["name"])
        path = default_generated_path(data_cfg["name"], data_cfg["generation_seed"], resolve_sizes(spec, sizes),
                                      spec.version)
        if not path.exists():
            raise DatasetError(f"{path}: missing and data.generate_if_missing=false; make it with "
                               f"'emorl data make {data_cfg['name']}' or set data.path")
        return path
    path, _ = make_or_reuse(data_cfg["name"], seed=data_cfg["generation_seed"], sizes=sizes, progress=progress)
    return path


def file_fingerprint(path: str | Path, sample_bytes: int = 1 << 20) -> str:
    """A fast content fingerprint of a (possibly 10 GB) file: size, first and last MiB."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(sample_bytes))
        if size > sample_bytes:
            handle.seek(max(sample_bytes, size - sample_bytes))
            digest.update(handle.read(sample_bytes))
    return digest.hexdigest()[:16]


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches of indices, a fresh seeded permutation per epoch (incomplete batches dropped).

    The sequence depends only on (num_items, batch_size, seed); ``start_batch`` skips the
    batches already consumed, so a resumed run sees exactly the data it would have seen.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_batch: int = 0):
        if num_items < batch_size:
            raise DatasetError(f"the training split has {num_items} images, fewer than one batch of {batch_size}; "
                               "generate more (data.train_size) or lower data.batch_size")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_batch = start_batch
        self.batches_per_epoch = num_items // batch_size

    def _epoch(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order = self._epoch(epoch)
            for b in range(offset, self.batches_per_epoch):
                yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            epoch, offset = epoch + 1, 0


def train_loader(dataset: MultiObjectDataset, batch_size: int, seed: int, start_batch: int,
                 num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, start_batch)
    # Its own generator: creating the loader's iterator must not draw from the global RNG,
    # which drives the model's sampling (a resumed run would otherwise be shifted by one draw).
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))


# The most a training split may take on the device when data.on_device=auto (uint8 pixels): the
# Tetrominoes (220 MB) and Multi-dSprites (740 MB) splits fit many times over on a GPU.
ON_DEVICE_AUTO_MAX_BYTES = 4 << 30


class DeviceBatches:
    """Endless training batches gathered on the device from the whole split held there as uint8.

    The same batches as :func:`train_loader` (same :class:`ResumableBatchSampler` order) and the
    same pixel values bit for bit (:func:`emorl.data.hdf5.pixel_values`), with no loader process,
    no host-to-device copy per step and no host synchronisation: each batch is two kernels
    (gather, value lookup). Only for splits read without crop or resize. Yields
    ``{"image": [B, 3, H, W]}`` in channels_last memory (or contiguous NCHW).
    """

    def __init__(self, dataset: MultiObjectDataset, batch_size: int, seed: int, start_batch: int,
                 device: torch.device, channels_last: bool = True):
        self.sampler = ResumableBatchSampler(len(dataset), batch_size, seed, start_batch)
        self.device, self.channels_last = device, channels_last
        self.pixels = torch.from_numpy(dataset.images_uint8()).to(device)  # [N, H, W, 3]
        self.values = pixel_values().to(device)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        sampler = self.sampler
        epoch, offset = divmod(sampler.start_batch, sampler.batches_per_epoch)
        size = sampler.batch_size
        while True:
            order = sampler._epoch(epoch)  # one small copy per epoch, from pinned memory: no wait
            order = order.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else order
            for b in range(offset, sampler.batches_per_epoch):
                pixels = self.pixels.index_select(0, order[b * size:(b + 1) * size])
                images = self.values[pixels.long()].permute(0, 3, 1, 2)  # NHWC memory = channels_last
                yield {"image": images if self.channels_last else images.contiguous()}
            epoch, offset = epoch + 1, 0


def use_device_batches(setting: str | bool, dataset: MultiObjectDataset, device: torch.device) -> bool:
    """Whether to hold the training split on the device (``data.on_device``: auto, true, false)."""
    if setting in (False, "false"):
        return False
    reasons = []
    if device.type != "cuda":
        reasons.append(f"the device is {device.type}, not a CUDA GPU")
    if not dataset.stored_as_returned:
        reasons.append("its images are cropped or resized when read (CLEVR)")
    nbytes = len(dataset) * 3 * dataset.image_hw[0] * dataset.image_hw[1]
    if setting in ("auto",) and nbytes > ON_DEVICE_AUTO_MAX_BYTES:
        reasons.append(f"it takes {nbytes / 2**30:.1f} GiB (auto keeps at most {ON_DEVICE_AUTO_MAX_BYTES >> 30} GiB)")
    if setting in (True, "true") and reasons:
        raise ConfigError(f"data.on_device=true, but the training split cannot be held on the device: "
                          f"{'; '.join(reasons)}; use data.on_device=auto or false")
    if setting not in (True, "true", "auto"):
        raise ConfigError(f"data.on_device={setting!r} is not one of auto, true, false")
    return not reasons


def eval_loader(dataset: MultiObjectDataset, num_images: int, batch_size: int, num_workers: int = 0) -> DataLoader:
    """The first ``num_images`` images of the split, in order (the paper: 320 test images)."""
    count = min(num_images, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(count))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
