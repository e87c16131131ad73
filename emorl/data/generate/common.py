"""The generator interface and the parallel driver that writes generated sets.

A generator module defines ``SPEC`` (or several specs, e.g. ``SPEC_CLEVR6``) and

    render(rng: np.random.Generator, **spec.options) -> (image, masks, factors)

returning one image: uint8 [H, W, 3]; bool masks [O, H, W] (entity 0 = background,
padding entities all False); float32 factors [O, F] in ``layout.FACTORS[spec.family]``
column order, visibility last.

Image ``i`` of split ``s`` is rendered with
``np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(s), i]))``, so its
bytes depend on nothing else: not on the number of workers, nor on the chunking.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emorl.data import layout
from emorl.data.paths import default_generated_path
from emorl.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class GeneratorSpec:
    """What a generator makes: name, factor family, frame size, entities and splits."""

    name: str  # "tetrominoes", "multi_dsprites", "multi_dsprites_textured", "clevr6", "clevr10"
    family: str  # key of layout.FACTORS: "tetrominoes" | "multi_dsprites" | "clevr"
    image_hw: tuple[int, int]  # stored frame size
    max_objects: int  # O, entities including background
    splits: dict[str, int]  # the paper's split sizes, e.g. {"train": 60000, "test": 320}
    version: str  # bump when the pictures change
    options: dict = field(default_factory=dict)  # passed to render(); e.g. object-count range
    crop: tuple[int, int, int, int] | None = None  # set when frames are stored pre-cropped (CLEVR)

    @property
    def num_factors(self) -> int:
        return len(layout.FACTORS[self.family])


# Generator name -> "module:SPEC_ATTRIBUTE", imported only when used.
GENERATORS: dict[str, str] = {
    "tetrominoes": "emorl.data.generate.tetrominoes:SPEC",
    "multi_dsprites": "emorl.data.generate.multi_dsprites:SPEC",
    "multi_dsprites_textured": "emorl.data.generate.multi_dsprites_textured:SPEC",
    "clevr6": "emorl.data.generate.clevr:SPEC_CLEVR6",
    "clevr10": "emorl.data.generate.clevr:SPEC_CLEVR10",
}

# Bytes of rendered images a worker sends back at once (bounds memory and IPC).
_CHUNK_BYTES = 4 << 20


def load_generator(name: str):
    """Return ``(spec, module)`` of generator ``name``; ConfigError when unknown or missing."""
    if name not in GENERATORS:
        raise ConfigError(f"unknown dataset generator {name!r}; expected one of {sorted(GENERATORS)}")
    module_name, _, attribute = GENERATORS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # a dependency of the generator is missing: show the real error
        raise ConfigError(
            f"dataset generator {name!r} is not available: module {module_name} is not part of this "
            "installation yet; use the original files instead ('emorl data convert FILE --dataset "
            f"{name}') or update emorl"
        ) from error
    spec = getattr(module, attribute, None)
    if not isinstance(spec, GeneratorSpec):
        raise ConfigError(f"{module_name} defines no GeneratorSpec named {attribute} (registry entry {name!r})")
    if spec.family not in layout.FACTORS:
        raise ConfigError(f"{module_name}.{attribute}: family {spec.family!r} is not one of {sorted(layout.FACTORS)}")
    return spec, module


def resolve_sizes(spec: GeneratorSpec, sizes: Mapping[str, int | None] | None = None) -> dict[str, int]:
    """The paper's splits of ``spec``, overridden by ``sizes``; splits of size 0 are dropped."""
    merged = dict(spec.splits)
    for split, size in (sizes or {}).items():
        if split not in layout.SPLITS:
            raise ConfigError(f"split {split!r} is not one of {list(layout.SPLITS)}")
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ConfigError(f"size of split {split!r} must be a whole number >= 0, got {size!r}")
        merged[split] = int(size)
    resolved = {s: merged[s] for s in layout.SPLITS if merged.get(s, 0) > 0}
    if not resolved:
        raise ConfigError(f"{spec.name}: every split size is 0 ({merged}); ask for at least one image")
    return resolved


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split``: independent of workers and chunks."""
    return np.random.default_rng(np.random.SeedSequence([seed, layout.SPLITS.index(split), index]))


def _check_rendered(spec: GeneratorSpec, image, masks, factors) -> None:
    height, width = spec.image_hw
    expected = {
        "image": (image, np.uint8, (height, width, 3)),
        "masks": (masks, np.bool_, (spec.max_objects, height, width)),
        "factors": (factors, np.float32, (spec.max_objects, spec.num_factors)),
    }
    for what, (array, dtype, shape) in expected.items():
        if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
            found = f"{array.dtype} {list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
            raise RuntimeError(
                f"generator {spec.name!r} returned {what} {found}; expected {np.dtype(dtype)} {list(shape)}"
            )


_LOADED: dict[str, tuple[GeneratorSpec, object]] = {}


def render_images(name: str, seed: int, split: str, start: int, count: int):
    """Render images ``start:start+count`` of ``split``; returns stacked (imgs, masks, factors)."""
    if name not in _LOADED:
        _LOADED[name] = load_generator(name)
    spec, module = _LOADED[name]
    height, width = spec.image_hw
    imgs = np.empty((count, height, width, 3), np.uint8)
    masks = np.empty((count, spec.max_objects, height, width), np.bool_)
    factors = np.empty((count, spec.max_objects, spec.num_factors), np.float32)
    for offset in range(count):
        image, mask, factor = module.render(image_rng(seed, split, start + offset), **spec.options)
        _check_rendered(spec, image, mask, factor)
        imgs[offset], masks[offset], factors[offset] = image, mask, factor
    return imgs, masks, factors


def _render_task(task: tuple) -> tuple:
    return task[2], task[3], render_images(*task)


@contextmanager
def _single_threaded_children():
    """Spawned workers inherit this environment: one thread each for numpy/torch kernels
    (parallelism is across processes)."""
    variables = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    saved = {v: os.environ.get(v) for v in variables}
    os.environ.update({v: "1" for v in variables})
    try:
        yield
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_chunk(spec: GeneratorSpec) -> int:
    """Images per task: about 4 MB of output, at most 64; independent of the worker count,
    so that the parent writes the same regions in the same order and the file's bytes do
    not depend on ``workers``."""
    height, width = spec.image_hw
    image_bytes = height * width * (3 + spec.max_objects)
    return int(min(max(1, _CHUNK_BYTES // image_bytes), 64))


def _file_attributes(spec: GeneratorSpec, module_name: str, seed: int, sizes: dict[str, int]) -> layout.FileAttributes:
    columns = layout.FACTORS[spec.family]
    return layout.FileAttributes(
        dataset=spec.name,
        generator=module_name,
        generator_version=spec.version,
        seed=seed,
        factor_names=[c[0] for c in columns],
        factor_types=[c[1] for c in columns],
        crop=spec.crop,
        extra={
            "requested_sizes": sizes,
            "options": spec.options,
            "image_hw": list(spec.image_hw),
            "max_objects": spec.max_objects,
            "seeding": "numpy default_rng(SeedSequence([seed, split index in (train, val, test), image index]))",
        },
    )


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


def generate(
    name: str,
    path: str | Path | None = None,
    seed: int = 0,
    sizes: Mapping[str, int | None] | None = None,
    workers: int | None = None,
    progress: bool = True,
    chunk: int | None = None,
) -> Path:
    """Render generator ``name`` into an HDF5 file (overwriting ``path``) and return its path.

    ``sizes`` overrides the paper's split sizes per split (0 drops a split); ``path``
    defaults to :func:`emorl.data.paths.default_generated_path`. Work is spread over
    ``workers`` processes (default: the usable cores) in tasks of ``chunk`` images (default
    :func:`default_chunk`); the parent writes them in order, so the file's bytes do not
    depend on ``workers``.
    """
    seed = _check_seed(seed)
    spec, module = load_generator(name)
    sizes = resolve_sizes(spec, sizes)
    path = Path(path).resolve() if path is not None else default_generated_path(name, seed, sizes, spec.version)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    total = sum(sizes.values())
    chunk = default_chunk(spec) if chunk is None else int(chunk)
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    tasks = [
        (name, seed, split, start, min(chunk, size - start))
        for split, size in sizes.items()
        for start in range(0, size, chunk)
    ]
    workers = min(workers, len(tasks))
    attributes = _file_attributes(spec, module.__name__, seed, sizes)
    bar = tqdm(total=total, desc=f"{name} -> {path.name}", unit="img", disable=not progress)
    with bar, layout.LayoutWriter(path, attributes, sizes, spec.image_hw, spec.max_objects) as writer:
        if workers == 1:
            results = map(_render_task, tasks)
            _write_all(writer, results, bar)
        else:
            import multiprocessing

            # spawn: a fresh interpreter per worker; fork is unsafe once torch has started threads.
            context = multiprocessing.get_context("spawn")
            with _single_threaded_children():
                pool = context.Pool(workers)
            with pool:
                _write_all(writer, pool.imap(_render_task, tasks), bar)
    return path


def _write_all(writer: layout.LayoutWriter, results, bar) -> None:
    for split, start, (imgs, masks, factors) in results:
        writer.write(split, start, imgs, masks, factors)
        bar.update(len(imgs))


def request_mismatch(path: str | Path, name: str, seed: int, sizes: Mapping[str, int] | None = None) -> str | None:
    """Why the file at ``path`` is not the generated set (name, seed, sizes); None when it is.

    The file must pass :func:`layout.inspect` and say it was made by the same generator
    and version with the same seed and requested sizes.
    """
    spec, module = load_generator(name)
    sizes = resolve_sizes(spec, sizes)
    try:
        info = layout.inspect(path)
    except DatasetError as error:
        return f"it is not a valid dataset file ({error})"
    attrs = info.attrs
    try:
        extra = json.loads(attrs.get("extra", "{}"))
    except (TypeError, ValueError):
        extra = {}
    found = {
        "dataset": attrs.get("dataset"),
        "generator": attrs.get("generator"),
        "generator_version": attrs.get("generator_version"),
        "seed": int(attrs["seed"]) if "seed" in attrs else None,
        "requested_sizes": extra.get("requested_sizes"),
    }
    wanted = {
        "dataset": spec.name,
        "generator": module.__name__,
        "generator_version": spec.version,
        "seed": int(seed),
        "requested_sizes": sizes,
    }
    different = [f"{key} {found[key]!r} (wanted {wanted[key]!r})" for key in wanted if found[key] != wanted[key]]
    if different:
        return "it was made for another request: " + ", ".join(different)
    actual = {split: info.splits[split].num_images for split in info.splits}
    if actual != sizes:
        return f"its splits hold {actual}, not {sizes}"
    return None


def make_or_reuse(
    name: str,
    seed: int = 0,
    sizes: Mapping[str, int | None] | None = None,
    workers: int | None = None,
    path: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Return ``(path, reused)``: reuse a present file made for this very request, else generate.

    A file that is present but was made for another request (or is broken) is never
    reused nor silently replaced: it raises DatasetError unless ``force`` is set.
    """
    seed = _check_seed(seed)
    spec, _ = load_generator(name)
    resolved = resolve_sizes(spec, sizes)
    path = Path(path).resolve() if path is not None else default_generated_path(name, seed, resolved, spec.version)
    if path.exists() and not force:
        reason = request_mismatch(path, name, seed, resolved)
        if reason is None:
            return path, True
        raise DatasetError(
            f"{path}: present but not reusable for {name} seed {seed} sizes {resolved}: {reason}; "
            "pass --force (force=True) to overwrite it, or choose another --out"
        )
    return generate(name, path, seed, resolved, workers, progress), False
