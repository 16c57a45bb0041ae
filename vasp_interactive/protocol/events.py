"""What VASP's stdout says, as typed events: the prompts, the acknowledgements and the results."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class PromptKind(str, Enum):
    """The three prompts VASP prints when it blocks reading stdin (the value is the prompt line)."""

    POSITIONS = "POSITIONS: reading from stdin"
    POSITIONS_AND_LATTICE = "POSITIONS AND LATTICE: reading from stdin"
    LATTICE = "LATTICE: reading from stdin"


# the line VASP prints once it has read the input a prompt asked for
ACCEPTED: dict[str, PromptKind] = {
    "POSITIONS: read from stdin": PromptKind.POSITIONS,
    "POSITIONS AND LATTICE: read from stdin": PromptKind.POSITIONS_AND_LATTICE,
    "LATTICE: read from stdin": PromptKind.LATTICE,
}


class ProtocolVariant(str, Enum):
    """Which dialect of the interactive protocol this VASP speaks, learnt from the prompts it prints."""

    UNKNOWN = "unknown"
    CLASSIC = "classic"  # positions only (<= 6.3, or >= 6.4.1 with ISIF < 3)
    LATTICE_PATCH = "lattice-patch"  # positions, then a LATTICE prompt (6.3 with the public patch)
    POSCAR_RECORD = "poscar-record"  # >= 6.4.1 with ISIF >= 3: a whole POSCAR record


Variant = ProtocolVariant  # the earlier name


@dataclass(frozen=True)
class StepStarted:
    """VASP began computing a structure (its first electronic step, or forces straight away).

    ``after``: the last input VASP accepted before it (None for the structure of POSCAR).
    """

    after: PromptKind | None


@dataclass(frozen=True, eq=False)
class StepResult:
    """One ionic step as read from stdout (forces in VASP's order)."""

    step: int
    free_energy: float
    energy_sigma0: float
    forces: np.ndarray
    scf_iterations: int
    magnetization: float | None = None
    scf_energies: tuple[float, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """VASP blocks reading stdin until the client answers."""

    kind: PromptKind


@dataclass(frozen=True)
class InputAccepted:
    """VASP confirmed that it read the input of the prompt ``kind``."""

    kind: PromptKind


@dataclass(frozen=True, eq=False)
class LatticeEcho:
    """The lattice patch's echo: the lattice VASP read (``new``) and the one it replaced, in Angstrom."""

    new: np.ndarray
    old: np.ndarray
    new_reciprocal: np.ndarray


@dataclass(frozen=True)
class HardStop:
    """VASP found a STOPCAR with LABORT: it ends this step after the current electronic step."""


@dataclass(frozen=True)
class ErrorMessage:
    """A failure message VASP printed, recognised by ``errors.classify``."""

    error: type
    message: str
    hint: str


Event = StepStarted | StepResult | Prompt | InputAccepted | LatticeEcho | HardStop | ErrorMessage
