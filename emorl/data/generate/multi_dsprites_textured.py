"""Multi-dSprites, textured: the variant of the EfficientMORL paper's Appendix B.1 (Fig. 11).

"As background a simple uniform texture and foreground objects that are multi-coloured with a
distinctive pattern", so that a model cannot decompose the images by grouping colours alone.
The scenes are those of :mod:`emorl.data.generate.multi_dsprites` (2-5 dSprites shapes on the
dSprites grids of scale, orientation and position, later sprites occluding earlier ones; the
same masks and factor columns); only the appearance differs (the paper does not describe it
further; this is ours):

* background: one texture over the whole image, a checkerboard or diagonal stripes (drawn
  with equal odds) of period 2, 3 or 4 pixels, alternating two gray levels g -/+ 0.1 with g
  uniform in [0.2, 0.8];
* each sprite: a pattern drawn in the sprite's own frame (it turns and scales with the sprite),
  stripes, a checkerboard or concentric rings (equal odds) of period 3-6 pixels at scale 1,
  alternating two colours: the first drawn as Multi-dSprites' (hue, saturation and value
  uniform) but with saturation and value in [0.5, 1], the second with its hue turned by a
  uniform 0.25-0.75 of the circle from the first, so the two always differ clearly.

Factors (``layout.FACTORS["multi_dsprites"]``): as Multi-dSprites; color_r/g/b hold the
sprite's *first* colour (the background's: its mean gray). The pattern, its period and the
second colour have no column in the layout and are not stored.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

from emorl.data.generate import multi_dsprites
from emorl.data.generate.multi_dsprites import MAX_SPRITES, MIN_SPRITES, SIZE, render_sprites

# Multi-dSprites' frame, entities, splits and options; a set of its own.
SPEC = dataclasses.replace(multi_dsprites.SPEC, name="multi_dsprites_textured", version="1")

BACKGROUND_PATTERNS = ("checker", "diagonal")
SPRITE_PATTERNS = ("stripes", "checker", "rings")
BACKGROUND_CONTRAST = 0.1  # the two gray levels are g - 0.1 and g + 0.1
_ROWS, _COLUMNS = np.mgrid[0:SIZE, 0:SIZE]


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def textured_background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniform texture of two gray levels: (uint8 image [64, 64, 3], mean gray as RGB)."""
    gray = rng.uniform(0.2, 0.8)
    kind = BACKGROUND_PATTERNS[rng.integers(len(BACKGROUND_PATTERNS))]
    period = int(rng.integers(2, 5))
    if kind == "checker":
        odd = (_ROWS // period + _COLUMNS // period) % 2 == 1
    else:
        odd = ((_ROWS + _COLUMNS) // period) % 2 == 1
    level = np.where(odd, gray + BACKGROUND_CONTRAST, gray - BACKGROUND_CONTRAST)
    return _to_uint8(np.repeat(level[..., None], 3, axis=-1)), np.full(3, gray)


def sprite_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two clearly different colours in [0, 1]: the second's hue is turned 0.25-0.75 of the circle."""
    hue, saturation, value = rng.uniform(size=3)
    saturation, value = 0.5 + 0.5 * saturation, 0.5 + 0.5 * value
    second_hue = (hue + rng.uniform(0.25, 0.75)) % 1.0
    return (np.array(colorsys.hsv_to_rgb(hue, saturation, value)),
            np.array(colorsys.hsv_to_rgb(second_hue, saturation, value)))


def patterned(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A two-colour pattern in the sprite frame (u, v): (uint8 pixels [64, 64, 3], first colour)."""
    first, second = sprite_colours(rng)
    kind = SPRITE_PATTERNS[rng.integers(len(SPRITE_PATTERNS))]
    period = rng.uniform(3.0, 6.0)
    if kind == "stripes":
        odd = np.floor(u / period) % 2 == 1
    elif kind == "checker":
        odd = (np.floor(u / period) + np.floor(v / period)) % 2 == 1
    else:
        odd = np.floor(np.hypot(u, v) / period) % 2 == 1
    return _to_uint8(np.where(odd[..., None], second, first)), first


def render(
    rng: np.random.Generator, min_sprites: int = MIN_SPRITES, max_sprites: int = MAX_SPRITES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: uint8 [64,64,3], bool visible masks [6,64,64], float32 factors [6,9]."""
    return render_sprites(rng, min_sprites, max_sprites, textured_background, patterned)
