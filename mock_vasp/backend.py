"""Physics backends: where the converged energy, forces and stress of the fake VASP come from.

A backend is named by a spec string:

* ``emt`` (default): ASE's EMT (Al Cu Ag Au Ni Pd Pt H C N O);
* ``gpaw``: GPAW, whose SCF iterations are real and replace the model's (see ``native_scf``);
* ``ase:package.module.ClassName``: any importable ASE calculator, built with the options.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BackendError


@dataclass
class PhysicsResult:
    energy: float  # free energy (VASP's TOTEN), eV
    forces: np.ndarray  # (N, 3) eV/Angstrom
    stress: np.ndarray | None  # ASE Voigt order, eV/Angstrom^3, or None


class Backend:
    """Wraps an ASE calculator; subclasses may run their own electronic loop."""

    native_scf = False

    def __init__(self, name: str, calculator: Any, elements: set[str] | None = None):
        self.name = name
        self.calculator = calculator
        self.elements = elements

    def check_elements(self, symbols: list[str]) -> None:
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


def _emt() -> Backend:
    from ase.calculators.emt import EMT, parameters

    return Backend("emt", EMT(), set(parameters))


def _import_calculator(path: str, options: dict[str, Any]) -> Backend:
    module_name, _, class_name = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise BackendError(f"backend 'ase:{path}': give the full path, e.g. ase:ase.calculators.emt.EMT")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, class_name)
    except (ImportError, AttributeError) as error:
        raise BackendError(f"backend 'ase:{path}' cannot be imported: {error}") from None
    try:
        calculator = factory(**options)
    except Exception as error:
        raise BackendError(f"backend 'ase:{path}' could not be built with {options}: {error}") from None
    return Backend(f"ase:{path}", calculator)


def make_backend(spec: str, options: dict[str, Any] | None = None) -> Backend:
    """Build the backend named by ``spec`` (see module docstring)."""
    options = dict(options or {})
    key = spec.strip()
    if key.lower() == "emt":
        return _emt()
    if key.lower() == "gpaw":
        from .gpaw_backend import GpawBackend

        return GpawBackend(options)
    if key.lower().startswith("ase:"):
        return _import_calculator(key[4:], options)
    raise BackendError(f"unknown backend '{spec}': use emt, gpaw or ase:module.ClassName")
