"""Render a :class:`SceneSpec` to a 32x32 RGB image that satisfies it exactly.

Objects are drawn with hard edges in the palette colors, at least one pixel apart, so the metrics
can find each one as a connected component. A relation holds between group centroids along its
axis, by a margin that dominates the offset across it (see :mod:`t2i_router.world.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from t2i_router.errors import InternalError
from t2i_router.world.spec import SceneSpec
from t2i_router.world.vocab import PALETTE, Shape, Size

IMAGE_SIZE = 32
# Side of each object's bounding box, in pixels; the metrics classify size by this extent.
SIZE_PX: dict[Size, int] = {"small": 5, "medium": 7, "large": 9}
GAP_PX = 1  # empty pixels kept between objects
RELATION_MARGIN_PX = 3.0  # along-axis centroid offset minus across-axis offset, at least
_MAX_ATTEMPTS = 400


class RenderError(InternalError, RuntimeError):
    """No layout satisfying the spec was found (a bug: every valid spec has one)."""


@cache
def shape_mask(shape: Shape, size_px: int) -> np.ndarray:
    """Boolean (size_px, size_px) mask of a shape filling its bounding box."""
    c = (np.arange(size_px) + 0.5)[None, :]  # pixel centres, x
    r = (np.arange(size_px) + 0.5)[:, None]  # pixel centres, y
    s = float(size_px)
    if shape == "square":
        mask = np.ones((size_px, size_px), dtype=bool)
    elif shape == "circle":
        mask = (c - s / 2) ** 2 + (r - s / 2) ** 2 <= (s / 2) ** 2 + 0.25
    elif shape == "triangle":  # apex at the top centre, base along the bottom row
        half_width = (r / s) * (s / 2) + 0.25
        mask = np.abs(c - s / 2) <= half_width
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask.setflags(write=False)
    return mask


@cache
def _mask_centroid(shape: Shape, size_px: int) -> tuple[float, float]:
    ys, xs = np.nonzero(shape_mask(shape, size_px))
    return float(xs.mean()), float(ys.mean())


@dataclass(frozen=True)
class PlacedObject:
    group: int
    x: int  # left column of the bounding box
    y: int  # top row of the bounding box
    size_px: int
    shape: Shape
    color: str

    @property
    def centroid(self) -> tuple[float, float]:
        dx, dy = _mask_centroid(self.shape, self.size_px)
        return self.x + dx, self.y + dy


def _free_positions(occupied: np.ndarray, size_px: int, region: np.ndarray) -> np.ndarray:
    """Top-left corners (N, 2) as (y, x) where a box fits on free pixels with a gap."""
    n = IMAGE_SIZE - size_px + 1
    side = size_px + 2 * GAP_PX
    padded = np.zeros((IMAGE_SIZE + 2 * GAP_PX + 1,) * 2, dtype=np.int32)
    padded[1 + GAP_PX : 1 + GAP_PX + IMAGE_SIZE, 1 + GAP_PX : 1 + GAP_PX + IMAGE_SIZE] = occupied
    integral = padded.cumsum(0).cumsum(1)
    # Sum of occupied pixels in the box grown by GAP_PX, for every top-left (y, x) of the box.
    ys = np.arange(n)[:, None]
    xs = np.arange(n)[None, :]
    total = (
        integral[ys + side, xs + side]
        - integral[ys, xs + side]
        - integral[ys + side, xs]
        + integral[ys, xs]
    )
    ok = (total == 0) & region[:n, :n]
    return np.argwhere(ok)


def _region(lo: int, hi: int, size_px: int, axis: int) -> np.ndarray:
    """Top-left corners whose box lies within [lo, hi) along ``axis`` (1 = x, 0 = y)."""
    region = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    idx = np.arange(IMAGE_SIZE)
    allowed = (idx >= lo) & (idx + size_px <= hi)
    if axis == 1:
        region[:, allowed] = True
    else:
        region[allowed, :] = True
    return region


def _band_extent(count: int, size_px: int) -> int:
    """Smallest band width that holds ``count`` boxes stacked in columns of the image height."""
    per_column = (IMAGE_SIZE + GAP_PX) // (size_px + GAP_PX)
    columns = -(-count // per_column)
    return columns * (size_px + GAP_PX) - GAP_PX


def _relation_holds(objects: list[PlacedObject], relation: str) -> bool:
    cents = [np.array([o.centroid for o in objects if o.group == g]).mean(0) for g in (0, 1)]
    dx, dy = cents[1] - cents[0]  # from A to B; "A left of B" means B is to the right
    along, across = {
        "left_of": (dx, dy),
        "right_of": (-dx, dy),
        "above": (dy, dx),
        "below": (-dy, dx),
    }[relation]
    return along - abs(across) >= RELATION_MARGIN_PX


def layout(spec: SceneSpec, rng: np.random.Generator) -> list[PlacedObject]:
    """Random non-overlapping positions for every object of ``spec``.

    For a relation, group A is drawn in a band on its side and group B in the opposite band; the
    split between the bands is random among those that fit both groups.
    """
    sizes = [SIZE_PX[g.size] for g in spec.groups]
    for _ in range(_MAX_ATTEMPTS):
        occupied = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        regions = [np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)] * len(spec.groups)
        if spec.relation is not None:
            axis = 1 if spec.relation in ("left_of", "right_of") else 0
            first = 0 if spec.relation in ("left_of", "above") else 1  # group at the low side
            lo_need = _band_extent(spec.groups[first].count, sizes[first])
            hi_need = _band_extent(spec.groups[1 - first].count, sizes[1 - first])
            split = int(rng.integers(lo_need, IMAGE_SIZE - hi_need - GAP_PX + 1))
            regions = [None, None]
            regions[first] = _region(0, split, sizes[first], axis)
            regions[1 - first] = _region(split + GAP_PX, IMAGE_SIZE, sizes[1 - first], axis)
        # Bigger objects first: they are the hardest to fit.
        order = sorted(
            ((gi, k) for gi, g in enumerate(spec.groups) for k in range(g.count)),
            key=lambda t: -sizes[t[0]],
        )
        objects: list[PlacedObject] = []
        for gi, _k in order:
            free = _free_positions(occupied, sizes[gi], regions[gi])
            if len(free) == 0:
                break
            y, x = free[int(rng.integers(len(free)))]
            s = sizes[gi]
            occupied[y : y + s, x : x + s] = True
            g = spec.groups[gi]
            objects.append(PlacedObject(gi, int(x), int(y), s, g.shape, g.color))
        else:
            if spec.relation is None or _relation_holds(objects, spec.relation):
                return objects
    raise RenderError(f"no layout found for {spec.to_text()!r} in {_MAX_ATTEMPTS} attempts")


def draw(objects: list[PlacedObject], background: str) -> np.ndarray:
    """Paint placed objects on a background; (32, 32, 3) uint8."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = PALETTE[background]
    for o in objects:
        mask = shape_mask(o.shape, o.size_px)
        patch = image[o.y : o.y + o.size_px, o.x : o.x + o.size_px]
        patch[mask] = PALETTE[o.color]
    return image


def group_masks(objects: list[PlacedObject], n_groups: int) -> np.ndarray:
    """(n_groups, 32, 32) bool: the pixels each group's objects cover."""
    masks = np.zeros((n_groups, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for o in objects:
        masks[o.group, o.y : o.y + o.size_px, o.x : o.x + o.size_px] |= shape_mask(
            o.shape, o.size_px
        )
    return masks


def render_with_masks(
    spec: SceneSpec, rng: np.random.Generator | int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render`'s image (the same one for the same ``rng``) and its groups' pixel masks,
    (len(spec.groups), 32, 32) bool."""
    objects = layout(spec, np.random.default_rng(rng))
    return draw(objects, spec.background), group_masks(objects, len(spec.groups))


def render(spec: SceneSpec, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """A (32, 32, 3) uint8 image that satisfies ``spec`` exactly.

    Args:
        spec: the scene.
        rng: a generator or a seed; the layout is the only random part.
    """
    rng = np.random.default_rng(rng)
    return draw(layout(spec, rng), spec.background)
