"""The watchdog: a small program that clears a VASP run when its driver goes away.

The driver starts it next to every launch (``python -I -S <this file> ...``) and keeps the write
end of a pipe whose read end the watchdog holds. When that pipe closes (the driver released the
run, or died in any way, SIGKILL included) the watchdog clears the run's process session: SIGCONT
(a stopped rank cannot act on SIGTERM), SIGTERM, and SIGKILL after a grace period; then it cancels
the run's Slurm step (its tasks are children of ``slurmstepd``, not in the session) and removes the
launch's private temporary directory (where Open MPI keeps its session directory).

Because it runs isolated from the package, this module imports only the standard library. The
pieces both sides need are defined here once and reused by the package: listing a session's
processes (:func:`session_members`) and finding and cancelling a named Slurm step
(:func:`list_slurm_steps`, :func:`newest_step`, :func:`cancel_slurm_step`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

PRIVATE_TMPDIR_PREFIX = "vasp-interactive-tmp-"
SLURM_TIMEOUT = 30.0


# ---------------------------------------------------------------------------- the process table
def _process_table(proc: str = "/proc") -> dict[int, tuple[int, int]]:
    """``pid -> (parent pid, session id)`` of every live (non-zombie) process, from ``/proc``."""
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as handle:
                # the command name (2nd field) may hold spaces and ')': split after its last ')'
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, ppid, sid = fields[0], fields[1], fields[3]
        if state not in (b"Z", b"X"):
            table[int(name)] = (int(ppid), int(sid))
    return table


def session_members(leader: int, proc: str = "/proc") -> list[int]:
    """PIDs of every live process in the session led by ``leader``, and of the leader's descendants.

    The session finds ranks whose launcher died (they are re-parented, but keep the session); the
    descendants find helpers that started a session of their own. Descendants are followed only while
    ``leader`` still leads its own session: a PID reused by another process must not be cleared.
    The leader comes first.
    """
    table = _process_table(proc)
    found = sorted(pid for pid, (_, sid) in table.items() if sid == leader)
    if leader not in found:
        return found
    found.remove(leader)
    found.insert(0, leader)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    pending = [leader]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.append(child)
                pending.append(child)
    return found


def _send(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def clear_session(leader: int, grace: float, proc: str = "/proc") -> list[int]:
    """SIGCONT and SIGTERM the session of ``leader``; SIGKILL what is left after ``grace`` seconds.

    Returns the PIDs that had to be killed.
    """
    alive = session_members(leader, proc)
    _send(alive, signal.SIGCONT)
    _send(alive, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = session_members(leader, proc)
    _send(alive, signal.SIGKILL)
    return alive


# ---------------------------------------------------------------------------- Slurm steps
def list_slurm_steps(job: str) -> list[tuple[str, str]]:
    """``(JOB.STEP, step name)`` of the job's running steps, from ``squeue``.

    Raises ``OSError``, ``subprocess.TimeoutExpired`` or ``subprocess.CalledProcessError`` (whose
    ``stderr`` is Slurm's message) when ``squeue`` cannot answer.
    """
    done = subprocess.run(["squeue", "--noheader", "--steps", "--jobs", job, "--format=%i %j"],
                          capture_output=True, text=True, timeout=SLURM_TIMEOUT, check=True)
    steps = []
    for line in done.stdout.splitlines():
        fields = line.split(None, 1)
        if not fields or "." not in fields[0] or not fields[0].split(".", 1)[1].isdigit():
            continue  # the extern and batch steps have names, not numbers
        steps.append((fields[0], fields[1].strip() if len(fields) > 1 else ""))
    return steps


def newest_step(steps: Sequence[tuple[str, str]], name: str | None) -> str | None:
    """The newest of ``steps`` called ``name`` (any step for ``None``), or ``None``."""
    mine = [step for step, step_name in steps if name is None or step_name == name]
    return max(mine, key=lambda step: int(step.split(".", 1)[1])) if mine else None


def cancel_slurm_step(name: str, job: str | None) -> str | None:
    """``scancel`` the job's newest step called ``name`` if Slurm lists it; the step id, or ``None``."""
    if not job:
        return None
    try:
        step = newest_step(list_slurm_steps(job), name)
        if step is not None:
            subprocess.run(["scancel", step], capture_output=True, timeout=SLURM_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return step


# ---------------------------------------------------------------------------- the private tmp dir
def remove_private_tmpdir(path: str) -> bool:
    """Remove a launch's private temporary directory; refuses any directory this package did not make."""
    if not os.path.basename(os.path.normpath(path)).startswith(PRIVATE_TMPDIR_PREFIX):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.exists(path)


# ---------------------------------------------------------------------------- the program
def _wait_until_closed(fd: int) -> None:
    while os.read(fd, 4096):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Wait for the driver's pipe to close, then clear the run (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="vasp-interactive-watchdog")
    parser.add_argument("--fd", type=int, required=True, help="read end of the driver's pipe")
    parser.add_argument("--session", type=int, required=True, help="session id (the launcher's PID)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--slurm-step", help="name of the run's Slurm step, to scancel")
    parser.add_argument("--tmpdir", help="the launch's private temporary directory, to remove")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver must not end us first
    _wait_until_closed(args.fd)
    clear_session(args.session, args.grace)
    if args.slurm_step:
        cancel_slurm_step(args.slurm_step, os.environ.get("SLURM_JOB_ID"))
    if args.tmpdir:
        remove_private_tmpdir(args.tmpdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
