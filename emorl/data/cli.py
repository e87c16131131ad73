"""``emorl data``: make, convert and show dataset files.

  emorl data make NAME [--seed S] [--train N] [--test N] [--workers W] [--out PATH] [--force]
  emorl data convert FILE --dataset NAME [--out PATH] [--train N] [--test N] [--full-frame]
  emorl data show FILE [--split test] [--num 8] [--out PNG]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from emorl.errors import ConfigError

# Colours of entities 0, 1, ... in pictures of masks (background gray, then distinct hues).
ENTITY_COLORS = np.array(
    [
        [96, 96, 96], [230, 25, 75], [60, 180, 75], [255, 225, 25], [245, 130, 48], [145, 30, 180],
        [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40],
        [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
    ],
    dtype=np.uint8,
)
CONVERT_DATASETS = ("tetrominoes", "multi_dsprites", "clevr6", "clevr10")


def register(subparsers) -> None:
    """Add ``data`` and its sub-commands to the ``emorl`` parser."""
    from emorl.data.generate.common import GENERATORS

    data = subparsers.add_parser("data", help="make, convert and show dataset files")
    commands = data.add_subparsers(dest="data_command", metavar="{make,convert,show}")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    make = commands.add_parser("make", help="generate a dataset (reused when already made)")
    make.add_argument("name", help=f"one of {', '.join(GENERATORS)}")
    make.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    make.add_argument("--train", type=int, default=None, help="training images (default: the paper's)")
    make.add_argument("--test", type=int, default=None, help="test images (default: the paper's)")
    make.add_argument("--workers", type=int, default=None, help="processes (default: the usable cores)")
    make.add_argument("--out", type=Path, default=None, help="output file (default: in the data folder)")
    make.add_argument("--force", action="store_true", help="generate again even if the file is present")
    make.set_defaults(func=run_make)

    convert = commands.add_parser("convert", help="convert an original TFRecord file to HDF5")
    convert.add_argument("file", type=Path, help="the original .tfrecords file")
    convert.add_argument("--dataset", required=True, choices=CONVERT_DATASETS)
    convert.add_argument("--out", type=Path, default=None, help="output file (default: in the data folder)")
    convert.add_argument("--train", type=int, default=None, help="training images (default: the paper's)")
    convert.add_argument("--test", type=int, default=None, help="test images (default: the paper's)")
    convert.add_argument("--full-frame", action="store_true",
                         help="CLEVR: keep the 240x320 frames (default: store the paper's 192x192 crop)")
    convert.set_defaults(func=run_convert)

    show = commands.add_parser("show", help="summarise a file and draw images beside their masks")
    show.add_argument("file", type=Path)
    show.add_argument("--split", default="test")
    show.add_argument("--num", type=int, default=8, help="images to draw (default 8)")
    show.add_argument("--out", type=Path, default=None, help="PNG to write (default: FILE_STEM-SPLIT.png here)")
    show.set_defaults(func=run_show)


def run_make(args: argparse.Namespace) -> int:
    from emorl.data.generate.common import make_or_reuse

    sizes = {"train": args.train, "test": args.test}
    path, reused = make_or_reuse(
        args.name, seed=args.seed, sizes=sizes, workers=args.workers, path=args.out, force=args.force
    )
    print(f"{'reused' if reused else 'wrote'} {path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from emorl.data.convert import convert_to_hdf5
    from emorl.data.paths import default_converted_path

    output = args.out if args.out is not None else default_converted_path(args.dataset, args.train, args.test)
    path = convert_to_hdf5(args.file.resolve(), Path(output).resolve(), args.dataset, train=args.train,
                           test=args.test, crop=not args.full_frame, progress=True)
    print(f"wrote {path}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from emorl.data.hdf5 import describe

    print(describe(args.file))
    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    out = args.out if args.out is not None else Path.cwd() / f"{args.file.stem}-{args.split}.png"
    grid = draw_grid(args.file, args.split, args.num)
    from PIL import Image

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
    print(f"wrote {Path(out).resolve()} ({grid.shape[1]}x{grid.shape[0]} pixels)")
    return 0


def _upscale(picture: np.ndarray, factor: int) -> np.ndarray:
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def draw_grid(path: str | Path, split: str = "test", num: int = 8, cell: int = 96, gap: int = 2) -> np.ndarray:
    """uint8 [rows, cols, 3]: per row, an image, its colour-coded segmentation, then each entity's mask.

    Images are shown as the masks are scored (CLEVR: the 192x192 crop, not resized);
    small frames are enlarged by whole factors to about ``cell`` pixels.
    """
    from emorl.data.hdf5 import MultiObjectDataset

    dataset = MultiObjectDataset(path, split)
    height, width = dataset.mask_hw
    if dataset.image_hw != (height, width):  # CLEVR: show the scored crop, not the model's input
        dataset = MultiObjectDataset(path, split, image_size=height)
    factor = max(1, round(cell / max(height, width)))
    num = min(num, len(dataset))
    num_entities = dataset.num_objects
    columns = 2 + num_entities
    tile_h, tile_w = height * factor, width * factor
    grid = np.full((num * (tile_h + gap) + gap, columns * (tile_w + gap) + gap, 3), 255, np.uint8)
    colors = ENTITY_COLORS[np.arange(num_entities) % len(ENTITY_COLORS)]
    for row in range(num):
        item = dataset[row]
        image = ((item["image"].permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        masks = item["masks"].numpy().astype(bool)
        segmentation = np.zeros((height, width, 3), np.uint8)
        for entity in range(num_entities):
            segmentation[masks[entity]] = colors[entity]
        tiles = [image, segmentation]
        for entity in range(num_entities):
            tiles.append(np.where(masks[entity][..., None], colors[entity], np.uint8(0)).astype(np.uint8))
        top = gap + row * (tile_h + gap)
        for column, tile in enumerate(tiles):
            left = gap + column * (tile_w + gap)
            grid[top : top + tile_h, left : left + tile_w] = _upscale(tile, factor)
    dataset.close()
    return grid
