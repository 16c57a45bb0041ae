"""Ways to stop and restart a run's ranks, and the choice between them.

* :class:`OpenMpiLauncherSignal`: SIGTSTP to Open MPI's launcher, which stops its ranks.
* :class:`LocalProcessSignal`: SIGSTOP to each local process of the run (any launcher, this node).
* :class:`SlurmStepSignal`: ``scancel --signal`` on the run's Slurm step (ranks on any node).

The choice is a pure function of what launched the run (:func:`identify_launcher`) and the
configured method (:func:`strategy_for`); :func:`choose_strategy` joins the two for a running
process. Falling back and checking that the ranks stopped is :class:`~.pauser.Pauser`'s job.
"""

from __future__ import annotations

import enum
import functools
import os
import shutil
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import psutil

from ..errors import SlurmError
from ..settings import PauseMethod, PauseSettings
from . import slurm, tree
from .launch import VaspProcess

RankFinder = Callable[[VaspProcess], list[psutil.Process]]
OPEN_MPI_LAUNCHERS = frozenset({"prterun", "orterun", "mpirun", "mpiexec"})
STRATEGY_FAILURES = (SlurmError, OSError, psutil.Error)
"""What a strategy raises when it cannot act (Slurm's commands failed, the process is gone)."""


class PauseStrategy(ABC):
    """One way to stop and restart a run's ranks; ``ranks`` lists those whose state shows it worked."""

    name = "abstract"

    @abstractmethod
    def pause(self, process: VaspProcess) -> None: ...

    @abstractmethod
    def resume(self, process: VaspProcess) -> None: ...

    def ranks(self, process: VaspProcess) -> list[psutil.Process]:
        """The local compute processes whose state tells whether the pause worked."""
        return process.rank_processes()


class OpenMpiLauncherSignal(PauseStrategy):
    """SIGTSTP to Open MPI's ``mpirun``, which stops its ranks with SIGSTOP; SIGCONT resumes."""

    name = "openmpi"

    def pause(self, process: VaspProcess) -> None:
        os.kill(process.pid, signal.SIGTSTP)

    def resume(self, process: VaspProcess) -> None:
        os.kill(process.pid, signal.SIGCONT)


class LocalProcessSignal(PauseStrategy):
    """SIGSTOP / SIGCONT to every local process of the run (any launcher, this node only).

    ``targets`` replaces the session's ranks (a Slurm step's tasks live outside the session).
    """

    name = "psutil"

    def __init__(self, targets: RankFinder | None = None) -> None:
        self.targets = targets

    def ranks(self, process: VaspProcess) -> list[psutil.Process]:
        return self.targets(process) if self.targets else process.rank_processes()

    def pause(self, process: VaspProcess) -> None:
        tree.signal_all(self.ranks(process), signal.SIGSTOP)

    def resume(self, process: VaspProcess) -> None:
        members = process.session_processes() + (self.targets(process) if self.targets else [])
        tree.signal_all(members, signal.SIGCONT)


class SlurmStepSignal(PauseStrategy):
    """``scancel --signal=STOP|CONT <job>.<step>`` for ranks that may live on other nodes.

    The step is found by the name given to this run's ``srun`` (see :mod:`.slurm`); only the tasks on
    this node can be checked, so a pause of a step with no local task is reported unverified.
    """

    name = "slurm"

    def __init__(self) -> None:
        self.step: str | None = None
        self._tasks: list[psutil.Process] | None = None

    def _find_step(self, process: VaspProcess) -> str:
        if self.step is None:
            self.step = slurm.find_step(process.slurm_step_name)
        return self.step

    def ranks(self, process: VaspProcess) -> list[psutil.Process]:
        if self._tasks is None:
            self._tasks = tree.leaf_processes(slurm.local_tasks(self._find_step(process)))
        return [task for task in self._tasks if tree.is_alive(task)]

    def pause(self, process: VaspProcess) -> None:
        slurm.signal_step(self._find_step(process), "STOP")

    def resume(self, process: VaspProcess) -> None:
        slurm.signal_step(self._find_step(process), "CONT")


# ---------------------------------------------------------------------------- the choice
class Launcher(enum.Enum):
    """What started the ranks, as far as pausing is concerned."""

    SLURM_STEP = "slurm"  # srun inside an allocation, with scancel at hand
    OPEN_MPI = "openmpi"  # Open MPI's mpirun / mpiexec / prterun (it forwards SIGTSTP)
    OTHER = "other"  # VASP itself, another MPI, a wrapper script


def identify_launcher(argv: Sequence[str], executable: str | None = None) -> Launcher:
    """What launched a run of ``argv``; ``executable`` is the running launcher's (after a wrapper's exec)."""
    if slurm.can_signal_steps(argv):
        return Launcher.SLURM_STEP
    path = executable or (shutil.which(argv[0]) if argv else None)
    if path and os.path.basename(path) in OPEN_MPI_LAUNCHERS and is_open_mpi(path):
        return Launcher.OPEN_MPI
    return Launcher.OTHER


@functools.lru_cache(maxsize=32)
def is_open_mpi(launcher: str) -> bool:
    """Whether the launcher at path ``launcher`` is Open MPI's (by its real name, else ``--version``)."""
    if os.path.basename(os.path.realpath(launcher)) in ("prterun", "orterun"):
        return True
    try:
        version = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in version or "OpenRTE" in version or "PRRTE" in version


def strategy_for(launcher: Launcher, method: PauseMethod) -> PauseStrategy | None:
    """The strategy for ``method`` (``auto``: the one that fits ``launcher``); ``None``: pausing is off."""
    if method == "none":
        return None
    if method == "slurm" or (method == "auto" and launcher is Launcher.SLURM_STEP):
        return SlurmStepSignal()
    if method == "openmpi" or (method == "auto" and launcher is Launcher.OPEN_MPI):
        return OpenMpiLauncherSignal()
    return LocalProcessSignal()


def choose_strategy(process: VaspProcess, settings: PauseSettings) -> PauseStrategy | None:
    """The pause strategy for a started run under ``settings``."""
    if settings.method != "auto":
        return strategy_for(Launcher.OTHER, settings.method)
    return strategy_for(identify_launcher(process.argv, process.launcher_executable()), settings.method)
