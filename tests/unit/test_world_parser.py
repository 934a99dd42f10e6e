"""The parser accepts the DESIGN vocabulary in any phrasing and names what it rejects."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_router.world import ObjectGroup, PromptError, SceneSpec, parse_prompt, sample_prompts
from t2i_router.world.sampler import phrase_spec, sample_spec


def G(count, color, shape, size="medium"):
    return ObjectGroup(count=count, color=color, shape=shape, size=size)


def test_parse_round_trips_2000_sampled_prompts():
    for text, spec in sample_prompts(2000, seed=11):
        assert parse_prompt(text) == spec, text


def test_every_spec_phrasing_round_trips_for_each_complexity():
    rng = np.random.default_rng(5)
    for level in ("single", "group", "pair", "relation"):
        for _ in range(100):
            spec = sample_spec(rng, level)
            assert spec.complexity == level
            assert parse_prompt(phrase_spec(rng, spec)) == spec
            assert parse_prompt(spec.to_text()) == spec


# Hand-written phrasings outside the sampler's templates, covering every synonym.
ACCEPTED = [
    ("a red circle", SceneSpec((G(1, "red", "circle"),))),
    ("An orange square", SceneSpec((G(1, "orange", "square"),))),
    ("one green triangle.", SceneSpec((G(1, "green", "triangle"),))),
    ("the blue circle", SceneSpec((G(1, "blue", "circle"),))),
    ("The one yellow square", SceneSpec((G(1, "yellow", "square"),))),
    ("purple triangle", SceneSpec((G(1, "purple", "triangle"),))),
    ("A SMALL RED CIRCLE", SceneSpec((G(1, "red", "circle", "small"),))),
    ("a tiny black square on white", SceneSpec((G(1, "black", "square", "small"),))),
    (
        "a little white triangle on black",
        SceneSpec((G(1, "white", "triangle", "small"),), None, "black"),
    ),
    ("a large green circle", SceneSpec((G(1, "green", "circle", "large"),))),
    ("a big blue square", SceneSpec((G(1, "blue", "square", "large"),))),
    ("a huge yellow triangle", SceneSpec((G(1, "yellow", "triangle", "large"),))),
    ("two red circles", SceneSpec((G(2, "red", "circle"),))),
    ("three blue squares", SceneSpec((G(3, "blue", "square"),))),
    ("four tiny green triangles", SceneSpec((G(4, "green", "triangle", "small"),))),
    ("the two huge purple circles", SceneSpec((G(2, "purple", "circle", "large"),))),
    ("two red circles, on a gray background", SceneSpec((G(2, "red", "circle"),), None, "gray")),
    ("two red circles on grey", SceneSpec((G(2, "red", "circle"),), None, "gray")),
    ("two red circles, grey backdrop.", SceneSpec((G(2, "red", "circle"),), None, "gray")),
    ("two red circles black background", SceneSpec((G(2, "red", "circle"),), None, "black")),
    ("two red circles on the black backdrop", SceneSpec((G(2, "red", "circle"),), None, "black")),
    ("red circle on a white background", SceneSpec((G(1, "red", "circle"),), None, "white")),
    ("On black, a white square", SceneSpec((G(1, "white", "square"),), None, "black")),
    (
        "Gray background, three orange triangles",
        SceneSpec((G(3, "orange", "triangle"),), None, "gray"),
    ),
    ("a red circle and a blue square", SceneSpec((G(1, "red", "circle"), G(1, "blue", "square")))),
    ("a red circle, and a red square", SceneSpec((G(1, "red", "circle"), G(1, "red", "square")))),
    ("a red circle and a blue circle", SceneSpec((G(1, "red", "circle"), G(1, "blue", "circle")))),
    (
        "a red circle left of a blue square",
        SceneSpec((G(1, "red", "circle"), G(1, "blue", "square")), "left_of"),
    ),
    (
        "a red circle to the left of a blue square",
        SceneSpec((G(1, "red", "circle"), G(1, "blue", "square")), "left_of"),
    ),
    (
        "a red circle right of a blue square",
        SceneSpec((G(1, "red", "circle"), G(1, "blue", "square")), "right_of"),
    ),
    (
        "a red circle to the right of the blue square",
        SceneSpec((G(1, "red", "circle"), G(1, "blue", "square")), "right_of"),
    ),
    (
        "two small red circles above a big blue square",
        SceneSpec((G(2, "red", "circle", "small"), G(1, "blue", "square", "large")), "above"),
    ),
    (
        "a red circle over two blue squares",
        SceneSpec((G(1, "red", "circle"), G(2, "blue", "square")), "above"),
    ),
    (
        "a red circle below a blue square",
        SceneSpec((G(1, "red", "circle"), G(1, "blue", "square")), "below"),
    ),
    (
        "a red circle under a blue square",
        SceneSpec((G(1, "red", "circle"), G(1, "blue", "square")), "below"),
    ),
    (
        "A red circle beneath a blue square.",
        SceneSpec((G(1, "red", "circle"), G(1, "blue", "square")), "below"),
    ),
    (
        "three small red circles above a large blue square on a black background",
        SceneSpec(
            (G(3, "red", "circle", "small"), G(1, "blue", "square", "large")), "above", "black"
        ),
    ),
    (
        "four tiny white squares, beneath, two huge yellow circles, on gray",
        SceneSpec(
            (G(4, "white", "square", "small"), G(2, "yellow", "circle", "large")), "below", "gray"
        ),
    ),
    ("  two   red circles   ", SceneSpec((G(2, "red", "circle"),))),
    (
        "two red circles , on a black background .",
        SceneSpec((G(2, "red", "circle"),), None, "black"),
    ),
    (
        "an orange triangle and four purple squares on grey",
        SceneSpec((G(1, "orange", "triangle"), G(4, "purple", "square")), None, "gray"),
    ),
    (
        "four big red squares and two small red circles",
        SceneSpec((G(4, "red", "square", "large"), G(2, "red", "circle", "small"))),
    ),
]


@pytest.mark.parametrize(("text", "spec"), ACCEPTED, ids=[t for t, _ in ACCEPTED])
def test_parser_accepts_hand_written_phrasing(text, spec):
    assert parse_prompt(text) == spec


REJECTED = [
    ("a red dog", "'dog'"),
    ("a crimson circle", "'crimson'"),
    ("a red circle next to a blue square", "'next'"),
    ("two red circles!", "'circles!'"),
    ("", "empty"),
    ("   ,  . ", "empty"),
    ("red circles", "needs a count"),
    ("one red circles", "singular"),
    ("a red circles", "singular"),
    ("three red circle", "plural"),
    ("five red circles", "'five'"),
    ("a red small circle", "before the color"),
    ("a small big red circle", "second size word"),
    ("a gray circle", "'gray'"),
    ("a red circle on a red background", "'red'"),
    ("a white circle", "background color"),
    ("a black square on black", "background color"),
    ("a red circle on a white background on black", "already given"),
    ("a red circle and", "ends early"),
    ("a red circle above", "ends early"),
    ("a red circle a blue square", "'a'"),
    ("a red circle left a blue square", "'left'"),
    ("a red circle and a blue square and a green triangle", "'and'"),
    ("four red circles and four blue squares", "8 objects, the limit is 6"),
    ("four red circles left of three blue squares", "7 objects"),
    ("three large red circles and two large blue squares", "5 large objects, the limit is 4"),
    ("a red circle and two red circles", "must differ in color or shape"),
    ("a small red circle above a large red circle", "must differ in color or shape"),
    ("a red circle on a purple background", "background color"),
    ("red", "ends early"),
    ("a red circle, a", "'a'"),
    ("x" * 301, "the limit is 300"),
]


@pytest.mark.parametrize(
    ("text", "message"), REJECTED, ids=[t[:40] or "<empty>" for t, _ in REJECTED]
)
def test_parser_rejects_with_a_message_naming_the_problem(text, message):
    with pytest.raises(PromptError) as info:
        parse_prompt(text)
    assert message in str(info.value)


def test_sampler_uses_every_synonym():
    words = set()
    for text, _ in sample_prompts(3000, seed=2):
        words.update(text.lower().replace(",", " ").replace(".", " ").split())
    synonyms = {
        "a", "an", "one", "two", "three", "four", "small", "tiny", "little", "large", "big",
        "huge", "circle", "circles", "square", "squares", "triangle", "triangles", "left",
        "right", "to", "of", "above", "over", "below", "under", "beneath", "and", "on",
        "background", "backdrop", "gray", "grey", "white", "black", "the",
        "red", "green", "blue", "yellow", "purple", "orange",
    }  # fmt: skip
    assert synonyms <= words, synonyms - words


def test_sampler_respects_complexity_and_is_reproducible():
    a = sample_prompts(50, seed=4, complexity="relation")
    assert a == sample_prompts(50, seed=4, complexity="relation")
    assert all(spec.relation is not None for _, spec in a)
    assert {s.complexity for _, s in sample_prompts(400, seed=1)} == {
        "single",
        "group",
        "pair",
        "relation",
    }
    with pytest.raises(ValueError, match="'complex'"):
        sample_prompts(1, complexity="complex")


def test_counterfactual_specs_reverse_one_compositional_fact():
    from t2i_router.world.spec import opposite_relation, swapped_shapes

    spec = parse_prompt("two red circles left of a blue square on black")
    assert opposite_relation(spec) == parse_prompt(
        "two red circles right of a blue square on black"
    )
    assert swapped_shapes(spec) == parse_prompt("two red squares left of a blue circle on black")
    assert opposite_relation(parse_prompt("a red circle and a blue square")) is None
    assert swapped_shapes(parse_prompt("three green triangles")) is None
    assert swapped_shapes(parse_prompt("a red circle and a blue circle")) is None  # nothing to swap
    assert swapped_shapes(parse_prompt("a red circle and a red square")) is None  # bound by color
