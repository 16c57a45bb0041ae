"""Stream the next structure to the running VASP, or restart it: a pure decision.

``plan_step`` takes what ASE says changed, the state of the VASP process, whether it can take a
new cell, and the settings; it returns what the calculator does next. No I/O, no session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from .protocol import LatticeCapability
from .settings import InteractiveSettings, RestartPolicy

# ASE's system_changes that no stream can carry: VASP's species, periodicity or start moments
SYSTEM_CHANGES = ("numbers", "pbc", "initial_magmoms")


class VaspState(Enum):
    """The VASP process of the calculator, as far as the decision needs it."""

    NOT_STARTED = "not started"  # no process yet, or closed by the user
    WAITING = "waiting"  # alive at a prompt: the next structure can be streamed
    EXHAUSTED = "exhausted"  # ended normally after spending its NSW budget
    ENDED = "ended"  # ended abnormally after delivering its last result


class RestartReason(Enum):
    START = "start"  # the first VASP (or the first after close())
    BUDGET = "nsw"  # VASP spent its NSW steps
    ENDED = "ended"  # VASP ended after its last result
    PARAMETERS = "parameters"  # calculator parameters changed
    SYSTEM = "system"  # atomic numbers, pbc or initial magnetic moments changed
    CELL = "cell"  # the cell changed and this VASP cannot stream a lattice
    FORCE_FIELD = "force-field"  # ml_steps="dft": rerun a force-field step by DFT


@dataclass(frozen=True)
class Reuse:
    """Nothing changed since the last result: answer from it (a property asked for later)."""


@dataclass(frozen=True)
class Stream:
    """Send the structure to the running VASP; ``cell_changed``: the lattice goes with it.

    With an unknown lattice capability this is a probe: the session stops VASP if it turns out
    not to read a lattice, and the calculator restarts it (``restart_for(RestartReason.CELL)``).
    """

    cell_changed: bool = False


@dataclass(frozen=True)
class Restart:
    """Start a new VASP on the structure. ``changed``: for SYSTEM, which of ASE's changes."""

    reason: RestartReason
    changed: tuple[str, ...] = ()
    warn: bool = False  # tell the user (restart policy's ``warn``)

    @property
    def what(self) -> str:
        return describe(self.reason, self.changed)

    @property
    def counts_as_restart(self) -> bool:
        return self.reason is not RestartReason.START

    @property
    def keeps_wavecar(self) -> bool:
        """Other species make the old wavefunctions useless, or unreadable for VASP."""
        return self.reason is not RestartReason.SYSTEM


@dataclass(frozen=True)
class Refuse:
    """A restart is needed and the restart policy says ``error``."""

    reason: RestartReason
    changed: tuple[str, ...] = ()

    @property
    def what(self) -> str:
        return describe(self.reason, self.changed)


StepPlan = Reuse | Stream | Restart | Refuse


def describe(reason: RestartReason, changed: tuple[str, ...] = ()) -> str:
    """Why VASP restarts, in words for a warning or an error."""
    if reason is RestartReason.SYSTEM:
        return f"{','.join(changed)} changed"
    return {
        RestartReason.START: "VASP is not running yet",
        RestartReason.BUDGET: "VASP spent its NSW steps",
        RestartReason.ENDED: "VASP ended after its last result",
        RestartReason.PARAMETERS: "calculator parameters changed",
        RestartReason.CELL: "the cell changed and this VASP cannot stream a lattice",
        RestartReason.FORCE_FIELD: "a force-field step is recomputed by DFT",
    }[reason]


def restart_for(reason: RestartReason, policy: RestartPolicy, changed: tuple[str, ...] = ()) -> Restart | Refuse:
    """A restart for ``reason`` under ``policy``: refused, warned about, or silent."""
    if reason is RestartReason.CELL:
        action = policy.cell
    elif reason in (RestartReason.SYSTEM, RestartReason.PARAMETERS):
        action = policy.system
    else:
        action = "restart"  # nothing to refuse: VASP is gone, or never ran
    if action == "error":
        return Refuse(reason, changed)
    warn = policy.warn and reason not in (RestartReason.START, RestartReason.BUDGET, RestartReason.FORCE_FIELD)
    return Restart(reason, changed, warn)


def can_stream_cell(capability: LatticeCapability, settings: InteractiveSettings) -> bool:
    """Send a new cell if this VASP reads one, or might (the first try probes it)."""
    return settings.stream_lattice != "no" and capability is not LatticeCapability.CANNOT


def plan_step(changes: Iterable[str], vasp: VaspState, capability: LatticeCapability,
              settings: InteractiveSettings, *, parameters_changed: bool = False,
              has_result: bool = False) -> StepPlan:
    """What to do for a structure, given ASE's ``system_changes`` since the last one.

    ``parameters_changed``: VASP parameters were set since VASP started; ``has_result``: the last
    structure's result is at hand.
    """
    changes = set(changes)
    if not changes and has_result and not parameters_changed:
        return Reuse()
    policy = settings.restart
    if vasp is VaspState.NOT_STARTED:
        return restart_for(RestartReason.START, policy)
    if vasp is VaspState.EXHAUSTED:
        return restart_for(RestartReason.BUDGET, policy)
    if vasp is VaspState.ENDED:
        return restart_for(RestartReason.ENDED, policy)
    if parameters_changed:
        return restart_for(RestartReason.PARAMETERS, policy)
    system = tuple(sorted(changes.intersection(SYSTEM_CHANGES)))
    if system:
        return restart_for(RestartReason.SYSTEM, policy, system)
    cell_changed = "cell" in changes
    if cell_changed and not can_stream_cell(capability, settings):
        return restart_for(RestartReason.CELL, policy)
    return Stream(cell_changed=cell_changed)
