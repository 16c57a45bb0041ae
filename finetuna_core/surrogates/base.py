"""Small, typed interface shared by all surrogate models of the online learner.

A *surrogate* is a machine-learned potential that predicts energy and forces, can be
fine-tuned on the parent (DFT) points collected so far, can be reset to its pre-trained
state, and can be saved and loaded.  Backends register a factory under a short name so the
learner can build them from configuration: ``make_surrogate("sevennet", ensemble_size=5)``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixAtoms, FixCartesian

__all__ = [
    "FineTuneReport",
    "LabelledPoint",
    "Prediction",
    "Surrogate",
    "SurrogateCalculator",
    "available_surrogates",
    "free_atom_mask",
    "make_surrogate",
    "register_surrogate",
]


def free_atom_mask(atoms: Atoms) -> np.ndarray:
    """Boolean mask (N,) of atoms that the optimizer may move.

    An atom is fixed if a ``FixAtoms`` constraint lists it, or if a ``FixCartesian``
    constraint fixes all three of its Cartesian components.  Other constraint types (bond
    lengths, planes, ...) do not fix atoms and are ignored here.
    """
    free = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[np.asarray(constraint.index, dtype=int)] = False
        elif isinstance(constraint, FixCartesian):
            mask = np.asarray(constraint.mask, dtype=bool).reshape(-1, 3)
            index = np.asarray(constraint.index, dtype=int)
            free[index[mask.all(axis=1)]] = False
    return free


@dataclass(frozen=True, eq=False)
class LabelledPoint:
    """One parent (DFT) point: a structure with its parent energy and forces.

    Attributes:
        atoms: positions, cell, pbc, numbers and constraints (``FixAtoms`` marks fixed atoms).
        energy: parent energy in eV.
        forces: (N, 3) parent forces in eV/Å, in the atom order of ``atoms``.
    """

    atoms: Atoms
    energy: float
    forces: np.ndarray

    def __post_init__(self) -> None:
        forces = np.array(self.forces, dtype=float)  # private copy, callers may reuse arrays
        if forces.shape != (len(self.atoms), 3):
            raise ValueError(f"forces must have shape ({len(self.atoms)}, 3) to match the atoms, got {forces.shape}")
        if not np.all(np.isfinite(forces)) or not np.isfinite(self.energy):
            raise ValueError("parent energy and forces must be finite")
        forces.setflags(write=False)
        object.__setattr__(self, "forces", forces)
        object.__setattr__(self, "energy", float(self.energy))
        object.__setattr__(self, "atoms", self.atoms.copy())  # copy drops the calculator

    @property
    def free_mask(self) -> np.ndarray:
        """Boolean mask (N,) of free (not ``FixAtoms``-constrained) atoms."""
        return free_atom_mask(self.atoms)

    @classmethod
    def from_atoms(cls, atoms: Atoms) -> LabelledPoint:
        """Build a point from atoms that carry a (single-point) calculator with results.

        Forces are read without applying constraints, i.e. the raw parent forces.
        """
        if atoms.calc is None:
            raise ValueError("atoms has no calculator with parent energy and forces")
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces(apply_constraint=False)
        return cls(atoms=atoms, energy=float(energy), forces=np.asarray(forces))


@dataclass
class Prediction:
    """Surrogate prediction for one structure.

    Attributes:
        energy: predicted energy (eV); for an ensemble, the ensemble mean.
        forces: (N, 3) predicted forces (eV/Å), caller's atom order; for an ensemble, the mean.
        force_spread: (N,) per-atom ensemble spread of the force vectors (eV/Å), i.e.
            ``sqrt(mean_k |F_k,i - mean_k F_k,i|^2)``, or None without an ensemble.
    """

    energy: float
    forces: np.ndarray
    force_spread: np.ndarray | None = None


@dataclass
class FineTuneReport:
    """What one call of :meth:`Surrogate.fine_tune` did.

    Attributes:
        method: name of the fine-tuning method used.
        n_points: number of parent points trained on.
        seconds: wall time of the call.
        details: method-specific numbers (chosen regularisation, train errors, timings, ...).
    """

    method: str
    n_points: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class Surrogate(ABC):
    """A fine-tunable machine-learned potential used by the online learner.

    Optional abilities, with defaults here: :meth:`fine_tune_changes` where
    :attr:`fits_force_changes` is true, :meth:`fine_tune_energies` where
    :attr:`fits_energy_differences` is true, and :meth:`values_at`, which backends may answer from
    what they cached while fine-tuning.
    """

    name: str = "surrogate"

    @abstractmethod
    def predict(self, atoms: Atoms) -> Prediction:
        """Predict energy, forces (and ensemble force spread, if any) for ``atoms``."""

    @abstractmethod
    def fine_tune(self, points: Sequence[LabelledPoint]) -> FineTuneReport:
        """Fine-tune on ``points``: the learner passes ALL its parent points, oldest first."""

    @property
    def fits_force_changes(self) -> bool:
        """Whether :meth:`fine_tune_changes` is available (it is not by default)."""
        return False

    def fine_tune_changes(self, points: Sequence[LabelledPoint], reference: LabelledPoint) -> FineTuneReport:
        """Fine-tune on the force *changes* ``F(p) - F(reference)`` of every other point.

        What a model that is already force-matched at ``reference`` still gets wrong is how the
        forces change away from it (its curvature); this fit spends the surrogate's freedom on
        that. Only backends with :attr:`fits_force_changes` implement it.
        """
        raise NotImplementedError(f"the {self.name} surrogate cannot fit force changes")

    @property
    def fits_energy_differences(self) -> bool:
        """Whether :meth:`fine_tune_energies` is available (it is not by default)."""
        return False

    def fine_tune_energies(self, points: Sequence[LabelledPoint], energy_weight: float) -> FineTuneReport:
        """:meth:`fine_tune` that also fits each point's energy relative to the newest point's.

        ``energy_weight`` weighs a point's energy against its forces (0: :meth:`fine_tune`). Only
        backends with :attr:`fits_energy_differences` implement it.
        """
        raise NotImplementedError(f"the {self.name} surrogate cannot fit energy differences")

    def values_at(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Energy and the forces on the free atoms (n_free, 3) under the current fit.

        Meant for parent points the surrogate was fine-tuned on, where a backend may answer
        from cached data without running the model; the default runs :meth:`predict`.
        """
        prediction = self.predict(atoms)
        return prediction.energy, np.asarray(prediction.forces)[free_atom_mask(atoms)]

    @abstractmethod
    def reset(self) -> None:
        """Return to the pre-trained state."""

    @abstractmethod
    def save(self, path: str | os.PathLike[str]) -> None:
        """Save the fine-tuned state to ``path``."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | os.PathLike[str]) -> Surrogate:
        """Load a surrogate saved with :meth:`save`."""

    def as_ase_calculator(self) -> Calculator:
        """An ASE calculator that answers energy and forces from :meth:`predict`."""
        return SurrogateCalculator(self)


class SurrogateCalculator(Calculator):
    """ASE calculator wrapper around a :class:`Surrogate`.

    ``results`` holds ``energy``, ``free_energy``, ``forces`` and, for ensembles,
    ``force_spread``.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, surrogate: Surrogate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.surrogate = surrogate

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] | None = None,
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        pred = self.surrogate.predict(self.atoms)
        self.results = {
            "energy": pred.energy,
            "free_energy": pred.energy,
            "forces": pred.forces,
        }
        if pred.force_spread is not None:
            self.results["force_spread"] = pred.force_spread


_REGISTRY: dict[str, Callable[..., Surrogate]] = {}


def register_surrogate(name: str, factory: Callable[..., Surrogate], *, overwrite: bool = False) -> None:
    """Register ``factory(**options) -> Surrogate`` under ``name`` (case-insensitive)."""
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"a surrogate named {name!r} is already registered")
    _REGISTRY[key] = factory


def make_surrogate(name: str, **options: Any) -> Surrogate:
    """Build the surrogate registered as ``name`` with backend ``options``."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown surrogate {name!r}; available: {', '.join(available_surrogates()) or 'none'}")
    return _REGISTRY[key](**options)


def available_surrogates() -> list[str]:
    """Names of the registered surrogates, sorted."""
    return sorted(_REGISTRY)
