"""The command lines' argument converters name the bad value."""

from __future__ import annotations

import argparse
import math

import pytest

from t2i_router.argtypes import non_negative_int, port, positive_float, positive_int, unit_interval


@pytest.mark.parametrize(
    ("convert", "text", "value"),
    [
        (positive_int, "3", 3),
        (non_negative_int, "0", 0),
        (positive_float, "0.5", 0.5),
        (unit_interval, "1", 1.0),
        (port, "65535", 65535),
    ],
)
def test_good_values_convert(convert, text, value) -> None:
    assert convert(text) == value and type(convert(text)) is type(value)


@pytest.mark.parametrize(
    ("convert", "text", "message"),
    [
        (positive_int, "x", "'x' is not an integer"),
        (positive_int, "1.5", "'1.5' is not an integer"),
        (positive_int, "0", "0 must be >= 1"),
        (non_negative_int, "-1", "-1 must be >= 0"),
        (positive_float, "0", "0.0 must be > 0"),
        (positive_float, "nan", "nan must be > 0"),
        (positive_float, "fast", "'fast' is not a number"),
        (unit_interval, "1.5", "1.5 must be in [0, 1]"),
        (unit_interval, "nan", "nan must be in [0, 1]"),
        (port, "http", "'http' is not a port number"),
        (port, "70000", "port 70000 is outside 0..65535"),
    ],
)
def test_bad_values_are_named(convert, text, message) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as err:
        convert(text)
    assert str(err.value) == message


def test_argparse_reports_the_message() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--ema", type=unit_interval)
    assert math.isclose(parser.parse_args(["--ema", "0.999"]).ema, 0.999)
    with pytest.raises(argparse.ArgumentError, match=r"1\.5 must be in \[0, 1\]"):
        parser.parse_args(["--ema", "1.5"])
