"""Scene specifications: what a prompt asks for, independent of its wording."""

from __future__ import annotations

from dataclasses import dataclass, replace

from t2i_router.errors import InvalidRequest
from t2i_router.world.vocab import (
    MAX_LARGE,
    MAX_OBJECTS,
    MAX_PER_GROUP,
    NUMBER_WORDS,
    OBJECT_COLORS,
    OPPOSITE_RELATION,
    SHAPES,
    SIZES,
    Background,
    Color,
    Relation,
    Shape,
    Size,
)


class PromptError(InvalidRequest, ValueError):
    """A prompt is outside the world's vocabulary or breaks one of its rules.

    The message names the first offending word or the rule that was broken.
    """


@dataclass(frozen=True)
class ObjectGroup:
    """``count`` objects of one color, shape and size."""

    count: int
    color: Color
    shape: Shape
    size: Size = "medium"

    @property
    def is_large(self) -> bool:
        return self.size == "large"

    def phrase(self) -> str:
        """Canonical English for the group, e.g. ``"two small red circles"``."""
        count = NUMBER_WORDS[self.count]
        if self.count == 1:
            count = "an" if self.color == "orange" and self.size == "medium" else "a"
        words = [count]
        if self.size != "medium":
            words.append(self.size)
        words.append(self.color)
        words.append(self.shape + ("s" if self.count > 1 else ""))
        return " ".join(words)


# Complexity levels, from simplest to most compositional.
COMPLEXITY_LEVELS: tuple[str, ...] = ("single", "group", "pair", "relation")


@dataclass(frozen=True)
class SceneSpec:
    """One or two object groups, an optional relation between them, and a background.

    ``relation`` is only set for two groups; two groups without a relation were joined by "and".
    A relation reads ``groups[0] <relation> groups[1]`` ("A left of B").
    """

    groups: tuple[ObjectGroup, ...]
    relation: Relation | None = None
    background: Background = "white"

    def __post_init__(self) -> None:
        check_spec(self)

    @property
    def n_objects(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def complexity(self) -> str:
        """One of :data:`COMPLEXITY_LEVELS`."""
        if len(self.groups) == 2:
            return "relation" if self.relation is not None else "pair"
        return "single" if self.groups[0].count == 1 else "group"

    @property
    def complexity_level(self) -> int:
        """Index of :attr:`complexity` in :data:`COMPLEXITY_LEVELS` (0 = simplest)."""
        return COMPLEXITY_LEVELS.index(self.complexity)

    def to_text(self) -> str:
        """Canonical prompt for this spec (parses back to an equal spec)."""
        text = self.groups[0].phrase()
        if len(self.groups) == 2:
            joiner = "and" if self.relation is None else self.relation.replace("_", " ")
            text += f" {joiner} {self.groups[1].phrase()}"
        return f"{text} on a {self.background} background"


def check_spec(spec: SceneSpec) -> None:
    """Raise :class:`PromptError` naming the first rule ``spec`` breaks."""
    groups = spec.groups
    if not isinstance(groups, tuple) or not 1 <= len(groups) <= 2:
        raise PromptError(f"a scene has one or two object groups, got {len(groups)}")
    for g in groups:
        if g.color not in OBJECT_COLORS:
            raise PromptError(f"unknown object color {g.color!r}")
        if g.shape not in SHAPES:
            raise PromptError(f"unknown shape {g.shape!r}")
        if g.size not in SIZES:
            raise PromptError(f"unknown size {g.size!r}")
        if not 1 <= g.count <= MAX_PER_GROUP:
            raise PromptError(f"a group holds 1 to {MAX_PER_GROUP} objects, got {g.count}")
        if g.color == spec.background:
            raise PromptError(
                f"object color {g.color!r} is the background color; objects must differ from it"
            )
    if spec.relation is not None and len(groups) != 2:
        raise PromptError(f"relation {spec.relation!r} needs two object groups")
    if spec.background not in ("white", "black", "gray"):
        raise PromptError(f"unknown background color {spec.background!r}")
    n = sum(g.count for g in groups)
    if n > MAX_OBJECTS:
        raise PromptError(f"the scene has {n} objects, the limit is {MAX_OBJECTS}")
    n_large = sum(g.count for g in groups if g.is_large)
    if n_large > MAX_LARGE:
        raise PromptError(f"the scene has {n_large} large objects, the limit is {MAX_LARGE}")
    if len(groups) == 2 and (groups[0].color, groups[0].shape) == (
        groups[1].color,
        groups[1].shape,
    ):
        raise PromptError(
            f"both groups are {groups[0].color} {groups[0].shape}s; "
            "the two groups must differ in color or shape"
        )


# Counterfactual specs: the same scene with one compositional fact reversed. An image that scores
# as well against its counterfactual as against its prompt did not follow that fact.
def opposite_relation(spec: SceneSpec) -> SceneSpec | None:
    """``spec`` with its relation reversed ("A left of B" -> "A right of B"); None without one."""
    if spec.relation is None:
        return None
    return replace(spec, relation=OPPOSITE_RELATION[spec.relation])


def swapped_shapes(spec: SceneSpec) -> SceneSpec | None:
    """``spec`` with the two groups' shapes exchanged (a red circle and a blue square -> a red
    square and a blue circle); None unless it has two groups of different colors and shapes."""
    if len(spec.groups) != 2:
        return None
    a, b = spec.groups
    if a.shape == b.shape or a.color == b.color:
        return None
    return replace(spec, groups=(replace(a, shape=b.shape), replace(b, shape=a.shape)))
