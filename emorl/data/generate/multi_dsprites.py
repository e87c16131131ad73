"""Multi-dSprites, colored on grayscale: 2-5 dSprites shapes on a gray background, 64x64.

As in the original (Burgess et al. 2019; Kabra et al. 2019): each sprite is a dSprites
shape (1 square, 2 ellipse, 3 heart) drawn from the dSprites grids of scale
(linspace(0.5, 1, 6)), orientation (linspace(0, 2 pi, 40)) and position
(linspace(0, 1, 32) per axis), in a colour drawn uniformly in HSV, on a background of
uniform random gray; later sprites occlude earlier ones. Sprites are binary (no
anti-aliasing), like dSprites. Masks are the *visible* parts, so they partition the image.

Geometry (the original's is not published; calibrated on the dataset's preview):
  the centre of a sprite is at pixel ``(0.25 + 0.5 x) W`` across and ``(0.25 + 0.5 y) H``
  down (``x``, ``y`` in [0, 1]; pixel ``(row, col)`` covers ``[col, col+1) x [row, row+1)``),
  and the shape is the area centroid of the sprite, so the mask centroid of an unoccluded
  sprite is at ``(centre - 0.5)`` in row/column indices; at scale 1 the square's side is
  16 px, the ellipse's axes 21 x 10.4 px (major axis along x at orientation 0) and the
  heart is 17 px wide (a square turned 45 degrees with two half-discs on its upper
  sides, point down). A sprite is turned counter-clockwise on screen by its orientation.

Factors, in ``layout.FACTORS["multi_dsprites"]`` order: x, y (grid values in [0, 1]),
shape (1..3, 0 = background), scale, orientation (radians), color_r/g/b (the sprite's
RGB in [0, 1] before quantisation to uint8), visibility (1 for background and sprites,
0 for padding). The background has x = y = shape = scale = orientation = 0 and its gray
level as colour. A sprite may be hidden entirely by later ones (as in the original): it
keeps visibility 1 and an empty mask.
"""

from __future__ import annotations

import colorsys

import numpy as np

from emorl.data.generate.common import GeneratorSpec

SIZE = 64
MIN_SPRITES, MAX_SPRITES = 2, 5

SPEC = GeneratorSpec(
    name="multi_dsprites",
    family="multi_dsprites",
    image_hw=(SIZE, SIZE),
    max_objects=MAX_SPRITES + 1,
    splits={"train": 60000, "test": 320},
    version="1",
    options={"min_sprites": MIN_SPRITES, "max_sprites": MAX_SPRITES},
)

SHAPE_NAMES = ("square", "ellipse", "heart")  # codes 1, 2, 3
# The dSprites latent grids.
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)

# Sizes at scale 1, in pixels.
SQUARE_SIDE = 16.0
ELLIPSE_AXES = (10.5, 5.2)  # semi-axes along the sprite's x and y
HEART_SIDE = 10.0  # side of the heart's square; width = (1/sqrt 2 + 1) * side
# The heart's area centroid lies this far above the centre of its square (in units of its
# side): two half-discs of area pi/8 each, their centroids (1/2 + 2/(3 pi))/sqrt 2 above.
_HEART_CENTROID = (np.pi / 4) * (0.5 + 2 / (3 * np.pi)) / np.sqrt(2) / (1 + np.pi / 4)

# Pixel centres (x across, y down).
_COORDS = np.arange(SIZE, dtype=np.float64) + 0.5


def sprite_centre(x: float, y: float) -> tuple[float, float]:
    """Pixel coordinates (across, down) of the centre of a sprite at grid position (x, y)."""
    return (0.25 + 0.5 * x) * SIZE, (0.25 + 0.5 * y) * SIZE


def sprite_frame(scale: float, orientation: float, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) [64, 64]: every pixel centre in the sprite's own frame at scale 1 (u along the
    sprite's x axis, v along its y axis, pointing up on screen at orientation 0)."""
    centre_x, centre_y = sprite_centre(x, y)
    dx = _COORDS[None, :] - centre_x
    up = centre_y - _COORDS[:, None]  # y up, so that orientation turns counter-clockwise
    cos, sin = np.cos(orientation), np.sin(orientation)
    return (cos * dx + sin * up) / scale, (cos * up - sin * dx) / scale


def sprite_mask(shape: int, scale: float, orientation: float, x: float, y: float) -> np.ndarray:
    """Bool [64, 64]: the pixels whose centre lies inside the sprite."""
    u, v = sprite_frame(scale, orientation, x, y)
    if shape == 1:
        half = SQUARE_SIDE / 2
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == 2:
        a, b = ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if shape == 3:
        side = HEART_SIDE
        v = v + _HEART_CENTROID * side  # from the area centroid to the centre of the square
        diamond = np.abs(u) + np.abs(v) <= side / np.sqrt(2)
        lobe_x, lobe_y, radius = side / (2 * np.sqrt(2)), side / (2 * np.sqrt(2)), side / 2
        lobes = ((np.abs(u) - lobe_x) ** 2 + (v - lobe_y) ** 2) <= radius**2
        return diamond | lobes
    raise ValueError(f"shape must be 1 (square), 2 (ellipse) or 3 (heart), got {shape}")


def gray_background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniform random gray: (uint8 image [64, 64, 3], its RGB in [0, 1] for the factors)."""
    gray = rng.uniform()
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = np.uint8(round(gray * 255))
    return image, np.full(3, gray)


def flat_colour(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One colour drawn uniformly in HSV: (uint8 pixels [64, 64, 3], the RGB in [0, 1])."""
    rgb = np.array(colorsys.hsv_to_rgb(*rng.uniform(size=3)))
    return np.broadcast_to(np.round(rgb * 255).astype(np.uint8), (SIZE, SIZE, 3)), rgb


def render_sprites(rng: np.random.Generator, min_sprites: int, max_sprites: int, background, paint
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Multi-dSprites scene whose background and sprite appearance are drawn by the callbacks:
    ``background(rng) -> (uint8 image [64, 64, 3], RGB factor [3])`` and ``paint(rng, u, v) ->
    (uint8 pixels [64, 64, 3], RGB factor [3])`` with (u, v) the sprite frame of every pixel
    (:func:`sprite_frame`). Returns uint8 [64, 64, 3], bool visible masks [6, 64, 64], float32
    factors [6, 9]; the random draws come in the same order whatever the callbacks draw."""
    if not 1 <= min_sprites <= max_sprites <= MAX_SPRITES:
        raise ValueError(f"need 1 <= min_sprites <= max_sprites <= {MAX_SPRITES}, got {min_sprites}, {max_sprites}")
    num_entities = MAX_SPRITES + 1
    num_sprites = int(rng.integers(min_sprites, max_sprites + 1))
    image, background_rgb = background(rng)
    labels = np.zeros((SIZE, SIZE), np.int8)
    factors = np.zeros((num_entities, 9), np.float32)
    factors[0, 5:8] = background_rgb
    factors[0, 8] = 1.0
    for entity in range(1, num_sprites + 1):
        shape = int(rng.integers(1, 4))
        scale = SCALES[rng.integers(len(SCALES))]
        orientation = ORIENTATIONS[rng.integers(len(ORIENTATIONS))]
        x = POSITIONS[rng.integers(len(POSITIONS))]
        y = POSITIONS[rng.integers(len(POSITIONS))]
        pixels, rgb = paint(rng, *sprite_frame(scale, orientation, x, y))
        inside = sprite_mask(shape, scale, orientation, x, y)
        labels[inside] = entity  # later sprites occlude earlier ones
        image[inside] = pixels[inside]
        factors[entity] = (x, y, shape, scale, orientation, *rgb, 1.0)
    masks = labels[None] == np.arange(num_entities, dtype=np.int8)[:, None, None]
    return image, masks, factors


def render(
    rng: np.random.Generator, min_sprites: int = MIN_SPRITES, max_sprites: int = MAX_SPRITES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: uint8 [64,64,3], bool visible masks [6,64,64], float32 factors [6,9]."""
    return render_sprites(rng, min_sprites, max_sprites, gray_background, flat_colour)
