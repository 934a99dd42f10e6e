"""Processes and process groups through Linux /proc: alive, members, terminate, die with parent,
and the Python backend's shared-memory files a killed server leaves in /dev/shm.

The server runs in its own process group (the Python backend stubs are its children and share
it), so stopping signals the whole group. With ``PR_SET_PDEATHSIG`` the kernel also SIGKILLs the
server when the thread that started it dies, so a crashed or killed parent leaves no orphan
behind; the stubs notice their parent is gone and exit on their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "OwnerThread",
    "is_process_alive",
    "pdeathsig_preexec",
    "process_group_members",
    "process_start_ticks",
    "python_backend_shm_files",
    "terminate_process_group",
]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# The Python backend's region between tritonserver and its stubs (1 MiB or more per model
# instance). Triton unlinks it on a clean exit; after a SIGKILL it stays in /dev/shm for good.
_PYTHON_BACKEND_SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on, or None if the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def is_process_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (Linux /proc)."""
    fields = _read_stat(pid)
    return fields is not None and fields[0] != "Z"


def process_start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot, to tell a pid from a reused one."""
    fields = _read_stat(pid)
    return None if fields is None else int(fields[19])


def process_group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid`` (Linux /proc)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _read_stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return sorted(members)


def terminate_process_group(
    pid: int,
    grace_s: float,
    is_alive: Callable[[], bool] | None = None,
    settle_s: float = 5.0,
) -> None:
    """Stops a process group leader: SIGTERM, then SIGKILL to its whole group after ``grace_s``.

    After the leader is gone, whatever is left of its group (Python backend stubs) is SIGKILLed
    too, and this waits up to ``settle_s`` for the group to empty.

    Args:
        pid: The leader; its pid is also the process group id.
        grace_s: How long to wait for a clean exit after SIGTERM.
        is_alive: Tells whether the leader still runs; defaults to a /proc check (for a
            process that is not our child and so cannot be waited for).
        settle_s: How long to wait for the rest of the group to disappear.
    """
    alive = is_alive or (lambda: is_process_alive(pid))
    # Signal the pid only while it is alive: once reaped, the number may belong to another process.
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        log.warning("tritonserver pid %d ignored SIGTERM for %.1f s; killing it", pid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + settle_s
    while (alive() or process_group_members(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = process_group_members(pid)
    if left:
        log.warning("processes %s of group %d survived SIGKILL", left, pid)


def python_backend_shm_files(pids: Iterable[int]) -> list[Path]:
    """The Python backend's /dev/shm files that these processes have mapped (/proc/<pid>/maps).

    Only that backend's regions: a system shared-memory region a client registered with Triton
    is mapped too, but belongs to the client.
    """
    found: set[Path] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:  # gone, or not ours to read
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(_PYTHON_BACKEND_SHM_PREFIX):
                found.add(Path(fields[5].removesuffix(" (deleted)")))
    return sorted(found)


class OwnerThread(threading.Thread):
    """A thread meant to live as long as the servers it starts (a supervisor's).

    A server started with ``die_with_parent`` from any other thread but the main one is logged
    as a likely mistake (it dies when that thread ends); from an OwnerThread that is the intent.
    """


def pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the starting thread dies."""
    # Resolved here, in the parent: between fork and exec the child must not dlopen or allocate
    # (another thread of the parent may have held those locks at fork time).
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    kill_signal = int(signal.SIGKILL)

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, kill_signal, 0, 0, 0)
        # The parent may have died before prctl; then no signal will ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec
