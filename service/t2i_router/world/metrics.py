"""Exact, vectorized quality metrics of an image against the prompt it was made for.

The quality vector has one dimension per aspect (:data:`ASPECTS`), each in [0, 1]:

- ``background``: share of the non-object pixels that have the prompted background color;
- ``color``: share of prompted colors present, times the share of object pixels in a prompted
  color (an unprompted object color costs);
- ``count``: ``1 - |n - c| / max(n, c)`` per group, n objects found, c asked for;
- ``shape``: share of the group's objects with the prompted shape;
- ``size``: share of the group's objects with the prompted size;
- ``relation``: ``clip(0.5 + (along - |across|) / (2 * margin))`` of the offset between the group
  centroids (along the relation's axis and across it); NaN when the prompt has no relation;
- ``sharpness``: CATImage's ``s = sum((i - G*i)^2) / sum(i^2)`` (G a Gaussian of sigma 1),
  mapped to ``1 - exp(-s / scale)``;
- ``cleanliness``: share of pixels near a palette color.

Objects are the connected components (8-neighbourhood) of pixels nearest to one object color;
shape comes from the fill of the bounding box (square) and the drop of mass toward its base
(triangle), size from the bounding box extent. Per-group scores are averaged over groups. When
both groups share a color, a group's objects are those of its color and shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage

from t2i_router.world.spec import SceneSpec
from t2i_router.world.vocab import OBJECT_COLORS, PALETTE, PALETTE_NAMES, SHAPES, SIZES

ASPECTS: tuple[str, ...] = (
    "background",
    "color",
    "count",
    "shape",
    "size",
    "relation",
    "sharpness",
    "cleanliness",
)
ALIGNMENT_ASPECTS: tuple[str, ...] = ASPECTS[:6]
ASPECT_INDEX = {name: i for i, name in enumerate(ASPECTS)}

_N_OBJ = len(OBJECT_COLORS)  # object colors are the first entries of the palette
_PALETTE_RGB = np.array([PALETTE[c] for c in PALETTE_NAMES], dtype=np.float32)  # (P, 3)
_COLOR_ID = {c: i for i, c in enumerate(PALETTE_NAMES)}
_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}
_SIZE_ID = {s: i for i, s in enumerate(SIZES)}
# (axis, sign) of each relation: axis 0 is x (left to right), 1 is y (top to bottom); the sign
# makes the offset from group A to group B positive where the relation puts B.
RELATION_AXES = {"left_of": (0, 1.0), "right_of": (0, -1.0), "above": (1, 1.0), "below": (1, -1.0)}
# Connect pixels within an image only, never across images or color planes.
_STRUCTURE = np.zeros((3, 3, 3, 3), dtype=bool)
_STRUCTURE[1, 1] = True


@dataclass(frozen=True)
class MetricConfig:
    """Thresholds of the metrics. Defaults are tuned so ground-truth renders score 1."""

    color_tolerance: float = 60.0  # RGB distance within which a pixel counts as a palette color
    min_area_px: int = 6  # smaller components are noise, not objects
    square_fill: float = 0.9  # bounding-box fill at or above which an object is a square
    triangle_drop: float = 0.06  # centroid below the box centre (share of height): a triangle
    small_max_px: int = 6  # extent <= this: small; <= medium_max_px: medium; else large
    medium_max_px: int = 8
    relation_margin_px: float = 3.0
    sharpness_scale: float = 0.003


def _check_batch(images: np.ndarray, specs: Sequence[SceneSpec]) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"images must be (N, 32, 32, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if len(specs) != len(images):
        raise ValueError(f"{len(images)} images but {len(specs)} specs")
    return images


@cache
def _palette_lut(tol: float) -> np.ndarray:
    """Palette index (or len(palette) when none is within ``tol``) for every 6-bit RGB cell."""
    levels = np.arange(64, dtype=np.float32) * 4 + 1.5  # cell centres
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    d2 = ((rgb[:, None, :] - _PALETTE_RGB[None]) ** 2).sum(-1)
    lut = d2.argmin(1).astype(np.uint8)
    lut[d2.min(1) > tol * tol] = len(PALETTE_NAMES)
    return lut


def _classify_pixels(images: np.ndarray, tol: float) -> np.ndarray:
    """Nearest palette index per pixel, or len(palette) when none is within ``tol``."""
    q = (images >> 2).astype(np.int32)
    return _palette_lut(float(tol))[(q[..., 0] << 12) | (q[..., 1] << 6) | q[..., 2]]


@dataclass
class _Components:
    image: np.ndarray  # (C,) image index
    color: np.ndarray  # (C,) object color id
    shape: np.ndarray  # (C,) shape id
    size: np.ndarray  # (C,) size id
    cx: np.ndarray  # (C,) centroid, pixels
    cy: np.ndarray


def _components(label: np.ndarray, groups: dict[str, np.ndarray], cfg: MetricConfig) -> _Components:
    """Objects of the prompted colors: one plane per group slot, (2, N, 32, 32)."""
    plane_color = np.where(groups["valid"], groups["color"], -1).T  # (2, N)
    plane_color[1, plane_color[1] == plane_color[0]] = -1  # a shared color is found once
    planes = label[None] == plane_color[:, :, None, None]
    comp, n_comp = ndimage.label(planes, structure=_STRUCTURE)
    slices = ndimage.find_objects(comp)
    bbox = np.array(
        [(s[0].start, s[1].start, s[2].start, s[2].stop, s[3].start, s[3].stop) for s in slices],
        dtype=np.int64,
    ).reshape(-1, 6)
    plane, image, y0, y1, x0, x1 = bbox.T
    color = plane_color[plane, image]
    flat = comp.ravel()
    fg = flat > 0
    lab = flat[fg]
    pos = np.flatnonzero(fg)
    ys = (pos // 32) % 32
    xs = pos % 32
    area = np.bincount(lab, minlength=n_comp + 1)[1:].astype(np.float64)
    cy = np.bincount(lab, weights=ys, minlength=n_comp + 1)[1:] / np.maximum(area, 1)
    cx = np.bincount(lab, weights=xs, minlength=n_comp + 1)[1:] / np.maximum(area, 1)
    h = (y1 - y0).astype(np.float64)
    w = (x1 - x0).astype(np.float64)
    fill = area / (h * w)
    drop = (cy - (y0 + y1 - 1) / 2.0) / h
    shape = np.where(
        fill >= cfg.square_fill,
        _SHAPE_ID["square"],
        np.where(drop >= cfg.triangle_drop, _SHAPE_ID["triangle"], _SHAPE_ID["circle"]),
    )
    extent = np.maximum(h, w)
    size = np.where(
        extent <= cfg.small_max_px,
        _SIZE_ID["small"],
        np.where(extent <= cfg.medium_max_px, _SIZE_ID["medium"], _SIZE_ID["large"]),
    )
    keep = area >= cfg.min_area_px
    return _Components(image[keep], color[keep], shape[keep], size[keep], cx[keep], cy[keep])


def _group_table(specs: Sequence[SceneSpec]) -> dict[str, np.ndarray]:
    """(N, 2) arrays describing each image's groups; ``valid`` masks the missing second group."""
    n = len(specs)
    t = {k: np.zeros((n, 2), dtype=np.int64) for k in ("color", "shape", "size", "count")}
    t["valid"] = np.zeros((n, 2), dtype=bool)
    for i, spec in enumerate(specs):
        for j, g in enumerate(spec.groups):
            t["color"][i, j] = _COLOR_ID[g.color]
            t["shape"][i, j] = _SHAPE_ID[g.shape]
            t["size"][i, j] = _SIZE_ID[g.size]
            t["count"][i, j] = g.count
            t["valid"][i, j] = True
    return t


def _lookup(keys: np.ndarray, n_keys: int, query: np.ndarray, weights=None) -> np.ndarray:
    return np.bincount(keys, weights=weights, minlength=n_keys)[query]


def raw_sharpness(images: np.ndarray) -> np.ndarray:
    """CATImage's unmapped sharpness ``sum((i - G*i)^2) / sum(i^2)`` per image, (N,)."""
    x = images.astype(np.float32) / 255.0
    blurred = ndimage.gaussian_filter(x, sigma=(0, 1, 1, 0), mode="reflect", truncate=3.0)
    num = ((x - blurred) ** 2).sum((1, 2, 3))
    den = (x * x).sum((1, 2, 3))
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)


def score_images(
    images: np.ndarray, specs: Sequence[SceneSpec], config: MetricConfig | None = None
) -> np.ndarray:
    """Quality vectors of ``images`` (N, 32, 32, 3) uint8 against their ``specs``.

    Returns:
        (N, len(ASPECTS)) float64 in [0, 1]; ``relation`` is NaN for prompts without a relation.
    """
    cfg = config or MetricConfig()
    images = _check_batch(images, specs)
    n = len(images)
    n_pal = len(PALETTE_NAMES)
    label = _classify_pixels(images, cfg.color_tolerance)  # (N, 32, 32)
    pixel_counts = np.bincount(
        (np.arange(n)[:, None] * (n_pal + 1) + label.reshape(n, -1)).ravel(),
        minlength=n * (n_pal + 1),
    ).reshape(n, n_pal + 1)
    g = _group_table(specs)
    comps = _components(label, g, cfg)
    valid = g["valid"]
    count = np.maximum(g["count"], 1).astype(np.float64)  # 1 in the unused second slot
    rows = np.arange(n)[:, None]

    # Keys: (image, color), (image, color, shape), with a size or no size.
    k_c = comps.image * _N_OBJ + comps.color
    k_cs = k_c * 3 + comps.shape
    q_c = rows * _N_OBJ + g["color"]
    q_cs = q_c * 3 + g["shape"]
    n_c = _lookup(k_c, n * _N_OBJ, q_c)
    n_cs = _lookup(k_cs, n * _N_OBJ * 3, q_cs)
    n_c_size = _lookup(k_c * 3 + comps.size, n * _N_OBJ * 3, q_c * 3 + g["size"])
    n_cs_size = _lookup(k_cs * 3 + comps.size, n * _N_OBJ * 9, q_cs * 3 + g["size"])
    shared = valid[:, 1] & (g["color"][:, 0] == g["color"][:, 1])
    shared2 = np.repeat(shared[:, None], 2, axis=1)
    n_cand = np.where(shared2, n_cs, n_c)

    def group_mean(per_group: np.ndarray) -> np.ndarray:
        return np.where(valid, per_group, 0.0).sum(1) / valid.sum(1)

    scores = np.full((n, len(ASPECTS)), np.nan)
    # Background: prompted background pixels among the pixels not in a prompted object color.
    bg = np.array([_COLOR_ID[s.background] for s in specs])
    prompted = np.zeros((n, n_pal + 1), dtype=bool)
    prompted[np.nonzero(valid)[0], g["color"][valid]] = True
    obj_px = np.where(prompted, pixel_counts, 0).sum(1)
    rest = label[0].size - obj_px
    scores[:, ASPECT_INDEX["background"]] = np.where(
        rest > 0, pixel_counts[np.arange(n), bg] / np.maximum(rest, 1), 0.0
    )
    # Color: prompted colors present, discounted by object pixels of unprompted colors.
    is_object_color = np.zeros((n, n_pal + 1), dtype=bool)
    is_object_color[:, :_N_OBJ] = True
    is_object_color[np.arange(n), bg] = False
    all_obj_px = np.where(is_object_color, pixel_counts, 0).sum(1)
    purity = np.where(all_obj_px > 0, obj_px / np.maximum(all_obj_px, 1), 0.0)
    scores[:, ASPECT_INDEX["color"]] = group_mean((n_c > 0).astype(np.float64)) * purity
    # Count.
    scores[:, ASPECT_INDEX["count"]] = group_mean(
        1.0 - np.abs(n_cand - count) / np.maximum(n_cand, count)
    )
    # Shape.
    shape_shared = np.minimum(1.0, n_cs / count)
    shape_alone = np.where(n_c > 0, n_cs / np.maximum(n_c, 1), 0.0)
    scores[:, ASPECT_INDEX["shape"]] = group_mean(np.where(shared2, shape_shared, shape_alone))
    # Size: among the group's objects of the right shape if any, else of its color.
    size_of_shape = n_cs_size / np.maximum(n_cs, 1)
    size_of_color = np.where(n_c > 0, n_c_size / np.maximum(n_c, 1), 0.0)
    scores[:, ASPECT_INDEX["size"]] = group_mean(np.where(n_cs > 0, size_of_shape, size_of_color))
    # Relation: group centroids = mean of their objects' centroids.
    has_rel = np.array([s.relation is not None for s in specs])
    if has_rel.any():
        cent = np.zeros((n, 2, 2))
        for axis, coord in enumerate((comps.cx, comps.cy)):
            s_c = _lookup(k_c, n * _N_OBJ, q_c, weights=coord)
            s_cs = _lookup(k_cs, n * _N_OBJ * 3, q_cs, weights=coord)
            cent[:, :, axis] = np.where(shared2, s_cs, s_c) / np.maximum(n_cand, 1)
        offset = cent[:, 1] - cent[:, 0]  # (N, 2): from group A to group B, (dx, dy)
        rel_axis = np.array([RELATION_AXES.get(s.relation, (0, 1.0))[0] for s in specs])
        rel_sign = np.array([RELATION_AXES.get(s.relation, (0, 1.0))[1] for s in specs])
        along = rel_sign * offset[np.arange(n), rel_axis]
        across = np.abs(offset[np.arange(n), 1 - rel_axis])
        rel = np.clip(0.5 + (along - across) / (2.0 * cfg.relation_margin_px), 0.0, 1.0)
        rel = np.where((n_cand > 0).all(1), rel, 0.0)
        scores[has_rel, ASPECT_INDEX["relation"]] = rel[has_rel]
    scores[:, ASPECT_INDEX["sharpness"]] = 1.0 - np.exp(
        -raw_sharpness(images) / cfg.sharpness_scale
    )
    scores[:, ASPECT_INDEX["cleanliness"]] = 1.0 - pixel_counts[:, n_pal] / label[0].size
    return scores


def mean_alignment(scores: np.ndarray) -> np.ndarray:
    """Mean of the applicable alignment aspects per row of ``score_images`` output."""
    align = np.asarray(scores)[..., : len(ALIGNMENT_ASPECTS)]
    return np.nanmean(align, axis=-1)


def pareto_relative_superiority(
    q_edge: np.ndarray,
    q_cloud: np.ndarray,
    mu_edge: np.ndarray,
    mu_cloud: np.ndarray,
    gamma: float = 1.0,
    weights: np.ndarray | None = None,
    eps: float = 1e-3,
) -> np.ndarray:
    """RouteT2I's PRS of the edge image over the cloud image; < 0.5 means the cloud is better.

    ``D_k = sigmoid((q_edge_k - q_cloud_k) / (gamma * |mu_edge_k - mu_cloud_k|))`` and
    ``PRS = sum_k w_k D_k / sum_k w_k`` over the aspects applicable to both (non-NaN).

    Args:
        q_edge, q_cloud: quality vectors, (..., K).
        mu_edge, mu_cloud: per-engine metric means (K,), from the training labels.
        gamma: temperature; smaller is closer to a hard win/loss count.
        weights: (K,) non-negative aspect weights (default: equal).
        eps: floor of the scale when the engines' means coincide.
    """
    q_edge = np.asarray(q_edge, dtype=np.float64)
    q_cloud = np.asarray(q_cloud, dtype=np.float64)
    if q_edge.shape != q_cloud.shape:
        raise ValueError(f"q_edge is {q_edge.shape} but q_cloud is {q_cloud.shape}")
    k = q_edge.shape[-1]
    if gamma <= 0:
        raise ValueError(f"gamma is {gamma}, must be > 0")
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {w}")
    scale = gamma * np.maximum(np.abs(np.asarray(mu_edge) - np.asarray(mu_cloud)), eps)
    z = (q_edge - q_cloud) / scale
    d = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid, symmetric to rounding: d(-z) = 1 - d(z)
    ok = ~(np.isnan(q_edge) | np.isnan(q_cloud))
    wk = np.where(ok, w, 0.0)
    return (np.where(ok, d, 0.0) * wk).sum(-1) / wk.sum(-1)
