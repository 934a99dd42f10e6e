"""argparse ``type=`` converters for the command lines: each names the bad value it rejects."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)


def ranged(
    convert: Callable[[str], T], noun: str, ok: Callable[[T], bool], rule: str
) -> Callable[[str], T]:
    """A converter: ``convert(text)``, or "'text' is not <noun>"; then ``ok(value)``, or ``rule``.

    ``rule`` is formatted with ``value``, e.g. ``"{value} must be >= 1"``.
    """

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(rule.format(value=value))
        return value

    return parse


positive_int = ranged(int, "an integer", lambda v: v >= 1, "{value} must be >= 1")
non_negative_int = ranged(int, "an integer", lambda v: v >= 0, "{value} must be >= 0")
positive_float = ranged(float, "a number", lambda v: v > 0, "{value} must be > 0")
non_negative_float = ranged(
    float, "a number", lambda v: 0 <= v < math.inf, "{value} must be a finite number >= 0"
)
unit_interval = ranged(float, "a number", lambda v: 0.0 <= v <= 1.0, "{value} must be in [0, 1]")
port = ranged(int, "a port number", lambda v: 0 <= v <= 65535, "port {value} is outside 0..65535")
