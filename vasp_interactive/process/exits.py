"""What an exit status says about how a run ended: a signal seen directly, or one a launcher reported.

A process killed by signal N has the status ``-N`` from ``Popen``. An MPI or Slurm launcher whose
rank was killed instead exits itself, with ``128 + N`` (``mpirun`` prints "exited on signal 11",
then exits 139), so the same death would otherwise read as an ordinary non-zero exit.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LAUNCHERS = frozenset({"mpirun", "mpiexec", "prterun", "orterun", "srun"})
"""Launchers that report a rank's death by signal N as their own exit status 128 + N."""


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class SignalDeath:
    """A run ended by a signal: ``reported_by`` names the launcher that turned it into an exit status."""

    signal_number: int
    exit_code: int
    reported_by: str | None = None

    @property
    def name(self) -> str:
        return signal_name(self.signal_number)

    def describe(self) -> str:
        """``SIGSEGV``, or ``SIGSEGV, reported by mpirun as exit 139``."""
        if self.reported_by is None:
            return self.name
        return f"{self.name}, reported by {self.reported_by} as exit {self.exit_code}"


def signal_death(argv: Sequence[str], exit_code: int | None) -> SignalDeath | None:
    """The signal that ended a run launched with ``argv`` and ending with ``exit_code``, if one did."""
    if exit_code is None:
        return None
    if exit_code < 0:
        return SignalDeath(-exit_code, exit_code)
    launcher = Path(argv[0]).name if argv else ""
    if launcher in LAUNCHERS and 128 < exit_code < 128 + signal.NSIG:
        return SignalDeath(exit_code - 128, exit_code, reported_by=launcher)
    return None
