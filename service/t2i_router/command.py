"""The error boundary the command lines share.

A command function raises `t2i_router.errors.RouterError` for anything the user can cause or
fix; :func:`run_command` turns it into one line on stderr and exit status 2, so no command
rewraps errors by hand and none ends in a traceback for a user's mistake. Anything else is a bug
and keeps its traceback. A command that knows what the user should do next adds that to the
error it lets through (``e.add_note("train it first ...")``) instead of raising a new one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from t2i_router.errors import RouterError

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "PROG", "one_line", "run_command"]

log = logging.getLogger(__name__)

PROG = "t2i-router"
EXIT_USER_ERROR = 2  # argparse's status for a bad command line, too
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def run_command(func: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Runs ``func(args)`` and returns the exit status.

    Returns:
        0 on success; 2 after printing ``t2i-router: error: <one_line(error)>`` to stderr for a
        `RouterError` (a message of several lines is logged whole at DEBUG); 130 after
        ``t2i-router: interrupted`` on Ctrl-C.
    """
    try:
        func(args)
    except RouterError as e:
        if "\n" in str(e):
            log.debug("%s", e)
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def one_line(error: BaseException) -> str:
    """The first line of ``error``'s message, then its notes (``add_note``), joined by "; "."""
    first = str(error).split("\n", 1)[0]
    return "; ".join([first, *getattr(error, "__notes__", ())])
