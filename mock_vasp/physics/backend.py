"""What a physics backend is: the source of the converged energy, forces and stress of the fake VASP.

``Backend`` wraps any ASE calculator; the electronic steps printed for it come from the SCF model
(``physics/scf.py``). A ``NativeScfBackend`` runs its own electronic loop instead and reports each
iteration. Backends are built by name in ``physics/registry.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import BackendError
from .scf import ScfLine, ScfOutcome

ScfStart = Literal["cold", "wavecar", "memory"]
"""How a native SCF starts: from scratch, from the saved wavefunctions, or from the last step in memory."""


@dataclass
class PhysicsResult:
    """The converged result of one structure."""

    energy: float  # free energy (VASP's TOTEN), eV
    forces: np.ndarray  # (N, 3) eV/Angstrom
    stress: np.ndarray | None  # ASE Voigt order, eV/Angstrom^3, or None


class Backend:
    """Wraps an ASE calculator; ``elements`` (if given) are the elements it can treat."""

    native_scf = False

    def __init__(self, name: str, calculator: Any, elements: set[str] | None = None):
        self.name = name
        self.calculator = calculator
        self.elements = elements

    def check_elements(self, symbols: list[str]) -> None:
        """Raise ``BackendError`` naming the elements this backend cannot treat."""
        if self.elements is None:
            return
        unknown = sorted(set(symbols) - self.elements)
        if unknown:
            raise BackendError(
                f"the physics backend '{self.name}' cannot treat element(s) {', '.join(unknown)}; "
                f"it knows {' '.join(sorted(self.elements))}. Choose another backend with "
                "MOCK_VASP_BACKEND or 'backend' in mock_vasp.json (e.g. ase:module.Calculator)"
            )

    def compute(self, symbols: list[str], cartesian: np.ndarray, lattice: np.ndarray,
                want_stress: bool) -> PhysicsResult:
        """Energy, forces and (if asked and available) stress of one periodic structure."""
        from ase import Atoms

        atoms = Atoms(symbols=symbols, positions=cartesian, cell=lattice, pbc=True)
        atoms.calc = self.calculator
        try:
            energy = float(atoms.get_potential_energy(force_consistent=True))
        except Exception:  # calculators without a free energy give the plain energy
            energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces(), dtype=float)
        stress = None
        if want_stress:
            try:
                stress = np.array(atoms.get_stress(voigt=True), dtype=float)
            except Exception:
                stress = None
        return PhysicsResult(energy, forces, stress)


class NativeScfBackend(Backend):
    """A backend whose electronic iterations are real; they replace the SCF model's."""

    native_scf = True

    def run_scf(self, symbols: list[str], cartesian: np.ndarray, lattice: np.ndarray, start: ScfStart,
                restart: Path | None, kpts: tuple[int, int, int], ediff: float, nelm: int, want_stress: bool,
                on_line: Callable[[ScfLine], bool]) -> tuple[PhysicsResult, ScfOutcome]:
        """One SCF from ``start`` (``restart``: the saved wavefunctions); ``on_line`` sees each iteration."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        """Write the wavefunctions a later run can start from (``start='wavecar'``)."""
        raise NotImplementedError
