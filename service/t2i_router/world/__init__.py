"""The miniature world: vocabulary, prompts, scenes, renderer and exact quality metrics."""

from t2i_router.world.metrics import (
    ALIGNMENT_ASPECTS,
    ASPECTS,
    MetricConfig,
    mean_alignment,
    pareto_relative_superiority,
    score_images,
)
from t2i_router.world.parser import parse_prompt
from t2i_router.world.renderer import IMAGE_SIZE, RenderError, render
from t2i_router.world.sampler import perturb_spec, phrase_spec, sample_prompts, sample_spec
from t2i_router.world.spec import COMPLEXITY_LEVELS, ObjectGroup, PromptError, SceneSpec

__all__ = [
    "ALIGNMENT_ASPECTS",
    "ASPECTS",
    "COMPLEXITY_LEVELS",
    "IMAGE_SIZE",
    "MetricConfig",
    "ObjectGroup",
    "PromptError",
    "RenderError",
    "SceneSpec",
    "mean_alignment",
    "pareto_relative_superiority",
    "parse_prompt",
    "perturb_spec",
    "phrase_spec",
    "render",
    "sample_prompts",
    "sample_spec",
    "score_images",
]
