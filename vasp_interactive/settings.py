"""Typed settings of the interactive calculator, with all defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``None`` disables a limit. None of them uses ``signal.alarm``.

    * ``startup``: from launch to the first result (includes VASP's set-up and first SCF);
    * ``step``: from sending a structure to its result;
    * ``silence``: VASP alive but printing nothing (a hang); one SCF iteration must fit in it;
    * ``stop``: for the clean STOPCAR shutdown before signals are used;
    * ``terminate``: grace after SIGTERM before SIGKILL.
    """

    startup: float | None = 3600.0
    step: float | None = 7200.0
    silence: float | None = 1800.0
    stop: float = 120.0
    terminate: float = 10.0


PauseMethod = Literal["auto", "openmpi", "psutil", "slurm", "none"]


@dataclass(frozen=True)
class PauseSettings:
    """How ranks are stopped while Python works.

    ``auto``: Slurm's ``scancel --signal`` for an ``srun`` step, SIGTSTP to an Open MPI launcher,
    otherwise SIGSTOP to every local process of the run (psutil). ``verify`` checks that the ranks
    really stopped (falling back to psutil when a launcher did not forward the signal).
    """

    method: PauseMethod = "auto"
    verify: bool = True
    verify_timeout: float = 2.0


RestartAction = Literal["restart", "error"]


@dataclass(frozen=True)
class RestartPolicy:
    """What to do when a change cannot be streamed to the running VASP.

    ``cell``: the cell changed and the protocol variant cannot stream it;
    ``system``: atomic numbers, pbc, magnetic moments or calculator parameters changed.
    A restart keeps the WAVECAR, so VASP starts from the old wavefunctions.
    """

    cell: RestartAction = "restart"
    system: RestartAction = "restart"
    warn: bool = True


StreamLattice = Literal["auto", "no"]
# A step VASP's machine-learned force field (ML_LMLFF) answered without DFT: "accept" it; "raise"
# MlStepRefused; "dft": restart VASP with the force field off and compute the structure by DFT (and
# every later one: the parent of a learner needs DFT labels).
MlSteps = Literal["accept", "raise", "dft"]


@dataclass(frozen=True)
class InteractiveSettings:
    """Everything about driving VASP that is not a VASP parameter."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    pause: PauseSettings = field(default_factory=PauseSettings)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    nsw: int = 2000  # VASP's step budget; the calculator restarts VASP when it is spent
    # "auto": stream a new cell where the prompt allows it; with an unknown 6.3-style VASP the first
    # cell change probes for the lattice patch. "no": every cell change restarts VASP.
    stream_lattice: StreamLattice = "auto"
    ml_steps: MlSteps = "accept"
    isym: int = 0  # ISYM forced unless the user sets it (a symmetry found at step 0 is kept)
    stdout_tail_lines: int = 40
    stderr_tail_bytes: int = 16384


# INCAR tags the calculator owns, with the reason it owns them (used in warnings).
FORCED_TAGS: dict[str, tuple[object, str]] = {
    "interactive": (True, "interactive mode is what this calculator drives"),
    "ibrion": (-1, "the ions are moved by the Python optimizer; VASP records IBRION = 11"),
    "potim": (0.0, "VASP must not move the ions itself"),
    "iwavpr": (11, "charge-density extrapolation kept in memory between steps"),
    "ediffg": (0.0, "convergence of the ionic loop is decided in Python"),
}
