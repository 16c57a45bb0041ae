"""Process control of a VASP run, all in one place: launching, the process tree, the watchdog,
pausing (strategies, their choice, fallback and verification) and Slurm steps.

* :mod:`.launch`: :class:`VaspProcess` (start, signal, terminate, reap) and :func:`resolve_command`.
* :mod:`.tree`: the run's processes and ranks as ``psutil`` objects.
* :mod:`.watchdog`: the stdlib-only program that clears a run whose driver went away.
* :mod:`.strategies`: ways to stop the ranks, and the choice between them.
* :mod:`.pauser`: :class:`Pauser`, which pauses, falls back, verifies and reports.
* :mod:`.exits`: what an exit status says (a signal, perhaps reported by a launcher).
* :mod:`.slurm`: naming, finding, signalling and cancelling this run's Slurm step.
"""

from .exits import SignalDeath, signal_death
from .launch import VaspProcess, resolve_command
from .pauser import PauseHandle, Pauser, PauseReport, stopped_ranks, wait_for_rank_state
from .strategies import (
    Launcher,
    LocalProcessSignal,
    OpenMpiLauncherSignal,
    PauseStrategy,
    RankFinder,
    SlurmStepSignal,
    choose_strategy,
    identify_launcher,
    strategy_for,
)
from .tree import leaf_processes, session_processes

__all__ = [
    "Launcher",
    "LocalProcessSignal",
    "OpenMpiLauncherSignal",
    "PauseHandle",
    "PauseReport",
    "PauseStrategy",
    "Pauser",
    "RankFinder",
    "SignalDeath",
    "SlurmStepSignal",
    "VaspProcess",
    "choose_strategy",
    "identify_launcher",
    "leaf_processes",
    "resolve_command",
    "session_processes",
    "signal_death",
    "stopped_ranks",
    "strategy_for",
    "wait_for_rank_state",
]
