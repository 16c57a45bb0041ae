"""GPAW as the physics of the fake VASP: real electronic steps instead of the model's.

Each GPAW SCF iteration becomes one ``DAV:`` line. The three VASP starts map onto GPAW's:
cold = a new calculator; ``ISTART = 1`` = the calculator read from ``WAVECAR.gpw`` (written with
``mode='all'``, so orbitals and density are reused); interactive = the same calculator kept in
memory and given new positions. GPAW runs serially on MPI rank 0.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError
from .backend import NativeScfBackend, PhysicsResult, ScfStart
from .scf import ScfLine, ScfOutcome

_LAUNCHER_VARIABLES = ("PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "I_MPI_MPIRUN")
DEFAULTS: dict[str, Any] = {
    "mode": "pw",
    "ecut": 250.0,
    "xc": "PBE",
    "occupations": {"name": "fermi-dirac", "width": 0.1},
}


def _import_gpaw():
    """Import GPAW's serial backend even inside an MPI launcher (it refuses otherwise)."""
    saved = {k: os.environ.pop(k) for k in _LAUNCHER_VARIABLES if k in os.environ}
    try:
        import gpaw
        import gpaw.mpi  # noqa: F401 - picks the serial communicator now
        from gpaw import GPAW, PW
    except ImportError as error:
        raise BackendError(f"backend 'gpaw' needs GPAW installed ({error}); see README (make gpaw)") from None
    finally:
        os.environ.update(saved)
    return gpaw, GPAW, PW


@contextlib.contextmanager
def _one_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


class GpawBackend(NativeScfBackend):
    """GPAW on rank 0, one ``DAV:`` line per GPAW SCF iteration."""

    def __init__(self, options: dict[str, Any]):
        self.options = {**DEFAULTS, **options}
        self._gpaw, self._GPAW, self._PW = _import_gpaw()
        super().__init__("gpaw", None, None)
        self._calc = None
        self._atoms = None

    def check_elements(self, symbols: list[str]) -> None:
        from gpaw.setup_data import search_for_file

        for symbol in sorted(set(symbols)):
            try:
                search_for_file(f"{symbol}.{self.options['xc']}")
            except Exception:  # noqa: BLE001 - GPAW raises RuntimeError or FileNotFoundError
                raise BackendError(f"GPAW has no {self.options['xc']} setup for element {symbol}") from None

    def _parameters(self, kpts, ediff: float, nelm: int) -> dict[str, Any]:
        options = dict(self.options)
        mode = options.pop("mode")
        ecut = options.pop("ecut")
        options.setdefault("kpts", kpts)
        options.setdefault("convergence", {"energy": ediff, "density": 1e-4})
        options.setdefault("maxiter", nelm)
        options["mode"] = self._PW(ecut) if mode == "pw" else mode
        options["txt"] = None
        return options

    def run_scf(self, symbols: list[str], cartesian: np.ndarray, lattice: np.ndarray, start: ScfStart,
                restart: Path | None, kpts: tuple[int, int, int], ediff: float, nelm: int, want_stress: bool,
                on_line: Callable[[ScfLine], bool]) -> tuple[PhysicsResult, ScfOutcome]:
        """One SCF: a new calculator (``cold``), one read from ``restart`` (``wavecar``) or the last one."""
        from ase import Atoms
        from ase.units import Ha

        atoms = Atoms(symbols=symbols, positions=cartesian, cell=lattice, pbc=True)
        if start == "memory" and self._calc is not None:
            calc = self._calc
        elif start == "wavecar" and restart is not None and restart.is_file():
            calc = self._GPAW(str(restart), txt=None)
        else:
            calc = self._GPAW(**self._parameters(kpts, ediff, nelm))
        outcome = ScfOutcome(0, False, 0.0)
        previous = [0.0]

        def hook(ctx) -> None:
            energy = float(ctx.energies.total_free) * Ha
            de = energy - previous[0] if outcome.lines else energy
            previous[0] = energy
            density_error = getattr(ctx.dens, "error", None)
            if density_error is not None and not np.isfinite(density_error):
                density_error = None
            eigen_error = getattr(ctx.wfs.eigensolver, "error", None) or 0.0
            line = ScfLine("DAV", int(ctx.niter), energy, de, float(eigen_error) * Ha, 0, float(eigen_error),
                           None if density_error is None else float(density_error), True)
            outcome.lines.append(line)
            outcome.iterations = line.index
            on_line(line)

        calc.hooks["scf_step"] = hook
        atoms.calc = calc
        try:
            with _one_thread():
                energy = float(atoms.get_potential_energy(force_consistent=True))
                forces = np.array(atoms.get_forces())
                stress = None
                if want_stress:
                    with contextlib.suppress(Exception):
                        stress = np.array(atoms.get_stress(voigt=True))
            outcome.converged = True
        except self._gpaw.KohnShamConvergenceError:
            energy = previous[0]
            forces = np.zeros((len(atoms), 3))
            stress = None
        self._calc, self._atoms = calc, atoms
        return PhysicsResult(energy, forces, stress), outcome

    def save(self, path: Path) -> None:
        if self._calc is not None:
            self._calc.write(str(path), mode="all")
