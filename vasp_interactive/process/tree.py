"""The process tree of one run as ``psutil`` objects: its members, its compute ranks, their states.

The listing itself is the watchdog's :func:`~.watchdog.session_members` (written once, in the
standard library only, because the watchdog runs without this package).
"""

from __future__ import annotations

import psutil

from .watchdog import session_members

STOPPED_STATES = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


def session_processes(leader: int) -> list[psutil.Process]:
    """Every live process of the session led by ``leader``: launcher, helpers and ranks (even orphaned)."""
    found = []
    for pid in session_members(leader):
        try:
            process = psutil.Process(pid)
        except psutil.Error:
            continue
        if is_alive(process):
            found.append(process)
    return found


def leaf_processes(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` that are no other's parent (the compute ranks, not launchers or wrappers)."""
    parents = set()
    for process in processes:
        try:
            parents.add(process.ppid())
        except psutil.Error:
            continue
    return [p for p in processes if p.pid not in parents] or processes


def is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_stopped(process: psutil.Process) -> bool:
    """Whether the scheduler has ``process`` stopped (SIGSTOP, SIGTSTP, a tracer); False once it is gone."""
    try:
        return process.status() in STOPPED_STATES
    except psutil.Error:
        return False


def signal_all(processes: list[psutil.Process], signum: int) -> None:
    """Send ``signum`` to each of ``processes``, skipping those already gone."""
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            continue
