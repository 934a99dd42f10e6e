"""The routing choices (an engine at a step count) and what each costs.

CATImage routes among M choices, models and step counts alike. Ours are each engine at its
default steps and at a cheaper count. A choice's cost is the UNet's FLOPs per image (host-
independent; counted by ``t2i-router engines card`` into the model card), with the measured
seconds per image beside it. The text encoder runs once per prompt whatever the choice, so it
is left out of the costs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from t2i_router.errors import ConfigError, InvalidRequest, MissingFileError

__all__ = [
    "DEFAULT_CHOICES",
    "Choice",
    "ChoiceCost",
    "choice_costs",
    "parse_choices",
]


@dataclass(frozen=True, order=True)
class Choice:
    """One way to make an image: ``engine`` sampled with ``steps`` steps (guidance 1)."""

    engine: str
    steps: int

    @property
    def name(self) -> str:
        """``"<engine>@<steps>"``, e.g. ``"cloud_large@20"``: the name in labels and APIs."""
        return f"{self.engine}@{self.steps}"

    @classmethod
    def parse(cls, text: str) -> Choice:
        """Parse ``"<engine>@<steps>"``; the error quotes the bad text."""
        engine, sep, steps = text.strip().partition("@")
        if not sep or not engine or not steps.isdigit() or int(steps) < 1:
            raise InvalidRequest(f"choice {text!r} is not '<engine>@<steps>' with steps >= 1")
        return cls(engine, int(steps))


# Ascending cost: each engine at a cheaper step count and at its default.
DEFAULT_CHOICES: tuple[Choice, ...] = (
    Choice("edge_small", 4),
    Choice("edge_small", 8),
    Choice("cloud_large", 10),
    Choice("cloud_large", 20),
)


def parse_choices(text: str | Sequence[str]) -> tuple[Choice, ...]:
    """Choices from ``"a@4,b@8"`` (or a list of such names), without repeats."""
    names = [n for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise InvalidRequest("no choices given")
    choices = tuple(Choice.parse(n) for n in names)
    if len(set(choices)) != len(choices):
        raise InvalidRequest(f"choices {[c.name for c in choices]} repeat one")
    return choices


@dataclass(frozen=True)
class ChoiceCost:
    """What one image of a choice costs.

    Attributes:
        gflops: UNet GFLOPs per image (passes per step x steps x FLOPs per pass).
        seconds: Measured seconds per image on the card's host (batch 32), scaled by steps.
    """

    gflops: float
    seconds: float


def choice_costs(
    choices: Sequence[Choice], models_dir: str | Path = "models"
) -> dict[str, ChoiceCost]:
    """Each choice's cost from its engine's model card (``models/<engine>/model_card.json``).

    Raises:
        MissingFileError: when an engine has no card.
        ConfigError: when its card has no cost entry.
    """
    out = {}
    for choice in choices:
        path = Path(models_dir) / choice.engine / "model_card.json"
        try:
            cost = json.loads(path.read_text())["cost"]
        except FileNotFoundError as e:
            raise MissingFileError(
                f"no model card at {path}: run `t2i-router engines card {choice.engine}`"
            ) from e
        except (KeyError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} has no readable 'cost' entry") from e
        per_step = cost["unet_flops_per_pass"] * cost["unet_passes_per_step"]
        seconds = cost["latency_s_per_image"]["batch_32"] * choice.steps / cost["default_steps"]
        out[choice.name] = ChoiceCost(
            gflops=round(per_step * choice.steps / 1e9, 4), seconds=round(seconds, 4)
        )
    return out
