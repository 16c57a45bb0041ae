"""The outcome of one relaxation, shared by every driver and baseline, and helpers to read it off."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ase import Atoms
from ase.calculators.calculator import Calculator

from .learner import point_fmax
from .surrogates.base import LabelledPoint

# "stalled": the trust-region driver's model could not move from its start (see trust_driver)
RelaxStatus = Literal["converged", "max-steps", "parent-budget", "time-cap", "stalled"]


@dataclass
class RelaxResult:
    """The outcome of one relaxation, comparable across methods."""

    method: str
    status: RelaxStatus
    parent_calls: int  # DFT calls
    force_calls: int
    energy: float  # parent energy of the final point
    fmax: float  # parent fmax (free atoms) of the final point
    seconds: float
    atoms: Atoms | None = None
    scf_iterations: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "atoms"}
        data["converged"] = self.converged
        return data


def best_converged(points: list[LabelledPoint], fmax: float) -> LabelledPoint | None:
    """The lowest parent point with fmax below ``fmax``, if any."""
    below = [p for p in points if point_fmax(p) < fmax]
    return min(below, key=lambda p: p.energy) if below else None


def scf_total(parent: Calculator) -> int | None:
    """SCF iterations a VASP parent spent (None for parents that do not count them)."""
    steps = getattr(parent, "steps", None)
    if steps is None:
        return None
    return int(sum(getattr(s, "scf_iterations", 0) for s in steps))
