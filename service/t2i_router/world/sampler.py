"""Sample scene specs with controllable complexity, and write each one in many phrasings."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from t2i_router.world.spec import COMPLEXITY_LEVELS, ObjectGroup, PromptError, SceneSpec
from t2i_router.world.vocab import (
    BACKGROUNDS,
    MAX_PER_GROUP,
    NUMBER_WORDS,
    OBJECT_COLORS,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
)

_SIZE_SYNONYMS = {
    size: tuple(w for w, s in SIZE_WORDS.items() if s == size) for size in ("small", "large")
}
_RELATION_SYNONYMS = {
    rel: tuple(" ".join(p) for p, r in RELATION_PHRASES.items() if r == rel) for rel in RELATIONS
}
_BACKGROUND_SYNONYMS = {"white": ("white",), "black": ("black",), "gray": ("gray", "grey")}
_BACKGROUND_TEMPLATES = (
    "on a {c} background",
    "on the {c} background",
    "on {c}",
    "on a {c} backdrop",
    "{c} background",
    "{c} backdrop",
)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _sample_group(
    rng: np.random.Generator, count: int, background: str, p_size_word: float
) -> ObjectGroup:
    color = _pick(rng, [c for c in OBJECT_COLORS if c != background])
    size = _pick(rng, ("small", "large")) if rng.random() < p_size_word else "medium"
    return ObjectGroup(count=count, color=color, shape=_pick(rng, SHAPES), size=size)


def sample_spec(
    rng: np.random.Generator,
    complexity: str | None = None,
    p_size_word: float = 0.5,
    p_background: float = 0.6,
) -> SceneSpec:
    """Draw a valid scene.

    Args:
        rng: the random generator (the only source of randomness).
        complexity: one of ``single`` (one object), ``group`` (one group of 2-4), ``pair``
            (two groups joined by "and"), ``relation`` (two groups and a relation); ``None``
            draws one uniformly.
        p_size_word: chance that a group carries a size word (else it is medium).
        p_background: chance of a non-white background (white is also the default).
    """
    if complexity is None:
        complexity = _pick(rng, COMPLEXITY_LEVELS)
    if complexity not in COMPLEXITY_LEVELS:
        raise ValueError(f"complexity is {complexity!r}, expected one of {COMPLEXITY_LEVELS}")
    background = _pick(rng, BACKGROUNDS[1:]) if rng.random() < p_background else "white"
    if complexity == "single":
        groups = (_sample_group(rng, 1, background, p_size_word),)
        return SceneSpec(groups=groups, background=background)
    if complexity == "group":
        count = int(rng.integers(2, MAX_PER_GROUP + 1))
        return SceneSpec(
            groups=(_sample_group(rng, count, background, p_size_word),), background=background
        )
    relation = _pick(rng, RELATIONS) if complexity == "relation" else None
    while True:  # rejection: at most a few draws, the rules reject a small share
        counts = rng.integers(1, MAX_PER_GROUP + 1, size=2)
        a = _sample_group(rng, int(counts[0]), background, p_size_word)
        b = _sample_group(rng, int(counts[1]), background, p_size_word)
        try:
            return SceneSpec(groups=(a, b), relation=relation, background=background)
        except PromptError:
            continue


def _group_text(rng: np.random.Generator, g: ObjectGroup) -> str:
    words = []
    if rng.random() < 0.1:
        words.append("the")
    if g.count == 1:
        if words:  # "the red circle" or "the one red circle"
            if rng.random() < 0.3:
                words.append("one")
        else:
            first = g.color if g.size == "medium" else "x"
            article = "an" if first[0] in "aeiou" else "a"
            words.append(_pick(rng, (article, article, "one")))
    else:
        words.append(NUMBER_WORDS[g.count])
    if g.size != "medium":
        words.append(_pick(rng, _SIZE_SYNONYMS[g.size]))
    words.append(g.color)
    words.append(g.shape + ("s" if g.count > 1 else ""))
    return " ".join(words)


def phrase_spec(rng: np.random.Generator, spec: SceneSpec, p_background: float = 0.7) -> str:
    """Write ``spec`` in one of many phrasings that :func:`parse_prompt` maps back to it.

    A white background is stated with probability ``p_background`` (it is the default); any
    other background is always stated.
    """
    text = _group_text(rng, spec.groups[0])
    if len(spec.groups) == 2:
        joiner = "and" if spec.relation is None else _pick(rng, _RELATION_SYNONYMS[spec.relation])
        text = f"{text} {joiner} {_group_text(rng, spec.groups[1])}"
    if spec.background != "white" or rng.random() < p_background:
        bg = _pick(rng, _BACKGROUND_TEMPLATES).format(
            c=_pick(rng, _BACKGROUND_SYNONYMS[spec.background])
        )
        text = f"{bg}, {text}" if rng.random() < 0.2 else f"{text}{_pick(rng, (' ', ', '))}{bg}"
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.2:
        text = text + "."
    return text


def sample_prompts(
    n: int, seed: int = 0, complexity: str | None = None
) -> list[tuple[str, SceneSpec]]:
    """``n`` (prompt, spec) pairs, reproducible from ``seed``."""
    if n < 0:
        raise ValueError(f"n is {n}, must be >= 0")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        spec = sample_spec(rng, complexity)
        out.append((phrase_spec(rng, spec), spec))
    return out


ASPECTS_TO_PERTURB = ("background", "color", "count", "shape", "size", "relation")


def perturb_spec(rng: np.random.Generator, spec: SceneSpec, aspect: str) -> SceneSpec | None:
    """A valid spec that differs from ``spec`` in ``aspect`` only, or None if none exists.

    Used to check that each metric notices a change of its own aspect.
    """
    if aspect not in ASPECTS_TO_PERTURB:
        raise ValueError(f"aspect is {aspect!r}, expected one of {ASPECTS_TO_PERTURB}")
    candidates: list[SceneSpec] = []

    def add(**kwargs) -> None:
        with contextlib.suppress(PromptError):
            candidates.append(replace(spec, **kwargs))

    def with_group(i: int, **kw) -> tuple[ObjectGroup, ...]:
        groups = list(spec.groups)
        groups[i] = replace(groups[i], **kw)
        return tuple(groups)

    if aspect == "background":
        for bg in BACKGROUNDS:
            if bg != spec.background:
                add(background=bg)
    elif aspect == "relation":
        if spec.relation is not None:
            for rel in RELATIONS:
                if rel != spec.relation:
                    add(relation=rel)
    else:
        values = {
            "color": OBJECT_COLORS,
            "count": tuple(range(1, MAX_PER_GROUP + 1)),
            "shape": SHAPES,
            "size": SIZES,
        }[aspect]
        for i, g in enumerate(spec.groups):
            for v in values:
                if v != getattr(g, aspect):
                    add(groups=with_group(i, **{aspect: v}))
    if not candidates:
        return None
    return _pick(rng, candidates)
