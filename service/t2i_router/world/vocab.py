"""The exact vocabulary and rules of the miniature world (DESIGN, "The miniature world").

Everything the sampler writes and the parser accepts is defined here, so the two cannot drift.
"""

from __future__ import annotations

from typing import Literal

Color = Literal["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
Background = Literal["white", "black", "gray"]
Shape = Literal["circle", "square", "triangle"]
Size = Literal["small", "medium", "large"]
Relation = Literal["left_of", "right_of", "above", "below"]

OBJECT_COLORS: tuple[Color, ...] = (
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
)
BACKGROUNDS: tuple[Background, ...] = ("white", "black", "gray")
SHAPES: tuple[Shape, ...] = ("circle", "square", "triangle")
SIZES: tuple[Size, ...] = ("small", "medium", "large")
RELATIONS: tuple[Relation, ...] = ("left_of", "right_of", "above", "below")

# Palette used by the renderer and by the metrics (RGB, uint8). Gray is a background only.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 135, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
PALETTE_NAMES: tuple[str, ...] = tuple(PALETTE)

# Words -> meaning. Every synonym the DESIGN lists, and nothing else.
COUNT_WORDS: dict[str, int] = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
SIZE_WORDS: dict[str, Size] = {
    "small": "small",
    "tiny": "small",
    "little": "small",
    "large": "large",
    "big": "large",
    "huge": "large",
}
SHAPE_WORDS: dict[str, tuple[Shape, bool]] = {
    "circle": ("circle", False),
    "square": ("square", False),
    "triangle": ("triangle", False),
    "circles": ("circle", True),
    "squares": ("square", True),
    "triangles": ("triangle", True),
}
BACKGROUND_WORDS: dict[str, Background] = {
    "white": "white",
    "black": "black",
    "gray": "gray",
    "grey": "gray",
}
# Phrase (as a word tuple) -> relation. "to the left of" is matched before "left of".
RELATION_PHRASES: dict[tuple[str, ...], Relation] = {
    ("to", "the", "left", "of"): "left_of",
    ("left", "of"): "left_of",
    ("to", "the", "right", "of"): "right_of",
    ("right", "of"): "right_of",
    ("above",): "above",
    ("over",): "above",
    ("below",): "below",
    ("under",): "below",
    ("beneath",): "below",
}
OPPOSITE_RELATION: dict[Relation, Relation] = {
    "left_of": "right_of",
    "right_of": "left_of",
    "above": "below",
    "below": "above",
}

# Scene rules.
MAX_PER_GROUP = 4
MAX_OBJECTS = 6
MAX_LARGE = 4
