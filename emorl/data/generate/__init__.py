"""Procedural generators of the Multi-Object benchmark's datasets.

One module per generator (``tetrominoes``, ``multi_dsprites``, ``multi_dsprites_textured``, ``clevr``), each
defining a :class:`GeneratorSpec` and ``render(rng, **options)``; the registry
:data:`GENERATORS` maps a dataset name to its spec, imported only when used, and
:func:`generate` writes a set in the HDF5 layout with worker processes.
"""

from emorl.data.generate.common import (
    GENERATORS,
    GeneratorSpec,
    generate,
    load_generator,
    make_or_reuse,
    request_mismatch,
    resolve_sizes,
)

__all__ = [
    "GENERATORS",
    "GeneratorSpec",
    "generate",
    "load_generator",
    "make_or_reuse",
    "request_mismatch",
    "resolve_sizes",
]
