"""Parse free-form prompts written in the world's vocabulary into a :class:`SceneSpec`.

Grammar (case-insensitive; commas, a final period and the article "the" are optional)::

    prompt      := [background ","] group [joiner group] ["," background]
    group       := ["the"] [count] [size] color shape
    joiner      := "and" | relation
    relation    := "left of" | "to the left of" | "right of" | "to the right of"
                 | "above" | "over" | "below" | "under" | "beneath"
    background  := "on" ["a" | "the"] bgcolor ["background" | "backdrop"]
                 | bgcolor ("background" | "backdrop")

A group without a count word is one object (its shape must be singular); a count of two or more
takes a plural shape. Anything else is rejected with a :class:`PromptError` naming the first
offending word, or the scene rule that was broken.
"""

from __future__ import annotations

import re

from t2i_router.world.spec import ObjectGroup, PromptError, SceneSpec
from t2i_router.world.vocab import (
    BACKGROUND_WORDS,
    COUNT_WORDS,
    OBJECT_COLORS,
    RELATION_PHRASES,
    SHAPE_WORDS,
    SIZE_WORDS,
    Background,
    Relation,
)

MAX_PROMPT_CHARS = 300
_WORD = re.compile(r"[a-z]+")
_BACKDROP_WORDS = ("background", "backdrop")


def _tokenize(text: str) -> list[str]:
    if not isinstance(text, str):
        raise PromptError(f"a prompt must be a string, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"prompt is {len(text)} characters, the limit is {MAX_PROMPT_CHARS}")
    words = text.lower().replace(",", " , ").split()
    # A period may end the prompt only; commas stand as their own token and are skipped.
    if words and words[-1].endswith(".") and words[-1] != ".":
        words[-1] = words[-1][:-1]
    elif words and words[-1] == ".":
        words.pop()
    tokens = []
    for w in words:
        if w == ",":
            continue
        if not _WORD.fullmatch(w):
            raise PromptError(f"unknown word {w!r}")
        tokens.append(w)
    if not tokens:
        raise PromptError("the prompt is empty")
    return tokens


class _Cursor:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self) -> str:
        word = self.tokens[self.i]
        self.i += 1
        return word

    @property
    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def unexpected(self, expected: str) -> PromptError:
        word = self.peek()
        if word is None:
            return PromptError(f"the prompt ends early: expected {expected}")
        known = (
            word in COUNT_WORDS
            or word in SIZE_WORDS
            or word in OBJECT_COLORS
            or word in BACKGROUND_WORDS
            or word in SHAPE_WORDS
            or word in ("the", "on", "and", "to", "of", "left", "right")
            or word in _BACKDROP_WORDS
            or (word,) in RELATION_PHRASES
        )
        what = "unexpected word" if known else "unknown word"
        return PromptError(f"{what} {word!r} (word {self.i + 1}): expected {expected}")


def _parse_background(cur: _Cursor) -> Background | None:
    """Consume a background phrase if one starts here."""
    word = cur.peek()
    if word == "on":
        j = 1
        if cur.peek(1) in ("a", "the"):
            j = 2
        color = cur.peek(j)
        if color not in BACKGROUND_WORDS:
            cur.i += j
            raise cur.unexpected("a background color (white, black, gray or grey)")
        cur.i += j + 1
        if cur.peek() in _BACKDROP_WORDS:
            cur.take()
        return BACKGROUND_WORDS[color]
    if word in BACKGROUND_WORDS and cur.peek(1) in _BACKDROP_WORDS:
        cur.i += 2
        return BACKGROUND_WORDS[word]
    return None


def _parse_group(cur: _Cursor) -> ObjectGroup:
    if cur.peek() == "the":
        cur.take()
    count: int | None = None
    if cur.peek() in COUNT_WORDS:
        count = COUNT_WORDS[cur.take()]
    size = "medium"
    if cur.peek() in SIZE_WORDS:
        size = SIZE_WORDS[cur.take()]
    color = cur.peek()
    if color not in OBJECT_COLORS:
        if color in SIZE_WORDS:
            raise PromptError(f"a second size word {color!r} (word {cur.i + 1})")
        raise cur.unexpected(
            "an object color (red, green, blue, yellow, purple, orange, white, black)"
        )
    cur.take()
    if cur.peek() in SIZE_WORDS:
        raise PromptError(
            f"size word {cur.peek()!r} (word {cur.i + 1}) after the color; "
            "write the size before the color, as in 'small red circle'"
        )
    shape_word = cur.peek()
    if shape_word not in SHAPE_WORDS:
        raise cur.unexpected("a shape (circle, square, triangle, or their plurals)")
    cur.take()
    shape, plural = SHAPE_WORDS[shape_word]
    if count is None:
        if plural:
            raise PromptError(f"{shape_word!r} needs a count word (two, three or four)")
        count = 1
    elif count == 1 and plural:
        raise PromptError(f"one object takes the singular: {shape_word!r} should be {shape!r}")
    elif count > 1 and not plural:
        raise PromptError(f"{count} objects take the plural: {shape_word!r} should be {shape}s")
    return ObjectGroup(count=count, color=color, shape=shape, size=size)  # type: ignore[arg-type]


def _parse_joiner(cur: _Cursor) -> tuple[bool, Relation | None]:
    """Return (found, relation); relation is None for "and"."""
    if cur.peek() == "and":
        cur.take()
        return True, None
    for phrase, relation in RELATION_PHRASES.items():
        n = len(phrase)
        if tuple(cur.tokens[cur.i : cur.i + n]) == phrase:
            cur.i += n
            return True, relation
    return False, None


def parse_prompt(text: str) -> SceneSpec:
    """Parse ``text`` into a :class:`SceneSpec`.

    Raises:
        PromptError: naming the first word outside the vocabulary or grammar, or the broken rule.
    """
    cur = _Cursor(_tokenize(text))
    background = _parse_background(cur)
    groups = [_parse_group(cur)]
    relation: Relation | None = None
    found, relation = _parse_joiner(cur)
    if found:
        groups.append(_parse_group(cur))
    if not cur.done:
        if background is not None:
            raise cur.unexpected("the end of the prompt (the background was already given)")
        background = _parse_background(cur)
        if not cur.done and _parse_background(cur) is not None:
            raise PromptError("a second background phrase: the background was already given")
        if background is None:
            expected = "a background phrase or the end of the prompt"
            if len(groups) == 1:
                expected = "'and', a relation (left of, right of, above, below, ...), " + expected
            raise cur.unexpected(expected)
    if not cur.done:
        raise cur.unexpected("the end of the prompt")
    return SceneSpec(groups=tuple(groups), relation=relation, background=background or "white")
