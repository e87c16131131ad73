"""Pictures of a model's outputs: decompositions (image, reconstruction, segmentation, per-slot
components) and grids of images (latent traversals). Drawing only, from arrays: numpy and
matplotlib, no torch, so that ``analysis/`` can redraw what ``emorl evaluate --figures`` computed
(see :mod:`emorl.engine.evaluation_figures`) without building a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _palette(count: int) -> np.ndarray:
    import matplotlib

    colours = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[:, :3]
    return colours[np.arange(count) % 20]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rgb(image) -> np.ndarray:
    """[3, H, W] (array or CPU tensor) -> [H, W, 3] float32 in [0, 1]."""
    return np.clip(np.asarray(image, dtype=np.float32).transpose(1, 2, 0), 0, 1)


def _bare(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def _save(figure, path: str | Path, formats: tuple[str, ...], dpi: int, tight: bool = False) -> list[Path]:
    """Write ``path`` in each of ``formats`` (suffix replaced), close the figure, return the paths."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path.with_suffix(f".{fmt}") for fmt in formats]
    for target in written:
        figure.savefig(target, dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(figure)
    return written


def decomposition_figure(images, reconstruction, masks, components, path: str | Path, max_images: int = 8,
                         title: str | None = None, formats: tuple[str, ...] = ("png",)) -> Path:
    """A grid, one row per image: input, reconstruction, argmax masks, then each slot's
    component times its mask. Arrays (or CPU tensors) in [0, 1]: images/reconstruction [B, 3, H, W],
    masks [B, K, 1, H, W], components [B, K, 3, H, W]. Writes ``path`` in each of ``formats``
    (suffix replaced) and returns the path of the first."""
    images, reconstruction, masks, components = (np.asarray(a, dtype=np.float32)
                                                 for a in (images, reconstruction, masks, components))
    plt = _pyplot()
    rows = min(max_images, images.shape[0])
    num_slots = masks.shape[1]
    columns = 3 + num_slots
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows + (0.4 if title else 0)),
                                squeeze=False)
    palette = _palette(num_slots)
    for row in range(rows):
        segmentation = palette[masks[row, :, 0].argmax(0)].transpose(2, 0, 1)
        panels = [images[row], reconstruction[row], segmentation]
        panels += [components[row, k] * masks[row, k] for k in range(num_slots)]
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(_rgb(panel), interpolation="nearest")
            _bare(axis)
            if row == 0:
                axis.set_title(["image", "reconstruction", "masks"][column] if column < 3 else f"slot {column - 2}",
                               fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path, formats, dpi=80)[0]


def image_grid(rows: Sequence[Sequence], path: str | Path, row_labels: Sequence[str], column_titles: Sequence[str],
               title: str, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Images [3, H, W] in rows (all rows as long as ``column_titles``), a label left of each row,
    a title above each column; written in each of ``formats``."""
    plt = _pyplot()
    count, columns = len(rows), len(column_titles)
    figure, axes = plt.subplots(count, columns, figsize=(1.3 * columns + 2.2, 1.4 * count + 0.9), squeeze=False)
    for r, pictures in enumerate(rows):
        for c, picture in enumerate(pictures):
            axis = axes[r, c]
            axis.imshow(_rgb(picture), interpolation="nearest")
            _bare(axis)
            axis.spines[:].set_visible(False)
            if r == 0:
                axis.set_title(column_titles[c], fontsize=8)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path, formats, dpi=130, tight=True)


def value_titles(count: int) -> list[str]:
    """Column titles of ``count`` traversal values: min, 1/(n-1), ..., max."""
    return ["min" if c == 0 else "max" if c == count - 1 else f"{c}/{count - 1}" for c in range(count)]


def traversal_figure(images, dims: Sequence[int], variance, path: str | Path, title: str,
                     formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Figs. 19-21: one row per latent dimension ``dims[r]`` of one slot, its traversed images
    ``images`` [rows, V, 3, H, W], labelled with the dimension's image variance."""
    images = np.asarray(images, dtype=np.float32)
    labels = [f"z[{d}]\nvar {float(variance[d]):.1e}" for d in dims]
    return image_grid(list(images), path, labels, value_titles(images.shape[1]), title, formats)
