"""PNG files in and out: 32x32 RGB images, stored at any integer upscale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from t2i_router.errors import InvalidRequest
from t2i_router.world.renderer import IMAGE_SIZE


class ImageFileError(InvalidRequest, ValueError):
    """A file is not a readable PNG at an integer upscale of 32x32."""


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of an (H, W, 3) image by an integer ``scale`` >= 1."""
    if scale < 1:
        raise ValueError(f"scale is {scale}, must be an integer >= 1")
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write a (32, 32, 3) uint8 image as PNG, upscaled by ``scale``; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(upscale(np.asarray(image, dtype=np.uint8), scale), mode="RGB").save(path)
    return path


def load_png(path: str | Path) -> np.ndarray:
    """Read an image at any integer upscale of 32x32 back to (32, 32, 3) uint8 (block means)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise ImageFileError(f"no such file: {path}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ImageFileError(f"{path} is not a readable image: {e}") from e
    h, w = rgb.shape[:2]
    if h != w or h % IMAGE_SIZE != 0:
        raise ImageFileError(
            f"{path} is {w}x{h}; expected {IMAGE_SIZE}x{IMAGE_SIZE} or an integer upscale of it"
        )
    k = h // IMAGE_SIZE
    # Block means: exact for nearest-neighbour upscales, sensible for smoothed ones.
    blocks = rgb.reshape(IMAGE_SIZE, k, IMAGE_SIZE, k, 3).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)
