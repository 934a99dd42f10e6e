"""The project's conftest keeps one test's process-wide torch settings from reaching the next."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parents[2] / "conftest.py"

# The first test changes the thread count, as Trainer(threads=...) or load_engine do; the second
# runs after it in the same process and expects the count it started with.
TWO_TESTS = """
import torch

START = torch.get_num_threads()


def test_one_changes_the_threads():
    torch.set_num_threads(1 if START != 1 else 2)


def test_two_sees_the_count_it_started_with():
    assert torch.get_num_threads() == START
"""


def test_a_tests_torch_thread_count_is_restored_for_the_next(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(test_threads=TWO_TESTS)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_without_the_fixture_the_thread_count_leaks(pytester: pytest.Pytester) -> None:
    """The control: the two tests above do detect the leak."""
    pytester.makepyfile(test_threads=TWO_TESTS)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, failed=1)
