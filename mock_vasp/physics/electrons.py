"""Electronic memory between ionic steps and across runs (the fake WAVECAR).

The WAVECAR of the fake VASP is its own format: a magic line followed by a NumPy ``.npz``
archive with the converged bond charges, the geometry they belong to and the species.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .scf import StartGuess, cold_start, extrapolated_start, wavefunction_start

MAGIC = b"MOCK-VASP WAVECAR 1\n"


@dataclass
class SavedWavefunction:
    species: list[str]
    counts: list[int]
    frac: np.ndarray
    lattice: np.ndarray
    bond_charges: np.ndarray


def write_wavecar(path: Path, saved: SavedWavefunction) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        species=np.array(saved.species),
        counts=np.array(saved.counts),
        frac=saved.frac,
        lattice=saved.lattice,
        bond_charges=saved.bond_charges,
    )
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(MAGIC + buffer.getvalue())
    temporary.replace(path)


def read_wavecar(path: Path) -> SavedWavefunction | None:
    """The saved state, or None when the file is absent, foreign or unreadable."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(MAGIC):
        return None
    try:
        archive = np.load(io.BytesIO(data[len(MAGIC):]), allow_pickle=False)
        return SavedWavefunction(
            species=[str(s) for s in archive["species"]],
            counts=[int(n) for n in archive["counts"]],
            frac=archive["frac"],
            lattice=archive["lattice"],
            bond_charges=archive["bond_charges"],
        )
    except (ValueError, KeyError, OSError):
        return None


@dataclass
class ElectronicMemory:
    """Converged states of the steps so far, used to start the next electronic loop."""

    iwavpr: int
    history_frac: list[np.ndarray] = field(default_factory=list)
    history_q: list[np.ndarray] = field(default_factory=list)
    restart: SavedWavefunction | None = None
    lattice: np.ndarray | None = None

    def start(self, frac: np.ndarray, lattice: np.ndarray) -> tuple[StartGuess, str]:
        """The starting guess and the line VASP prints about it."""
        n = len(frac)
        if self.history_q:
            if self.lattice is not None and not np.allclose(self.lattice, lattice):
                # a new cell: positions of the old cell do not extrapolate; keep the charges
                self.history_frac, self.history_q = self.history_frac[-1:], self.history_q[-1:]
            guess = extrapolated_start(self.history_q, self.history_frac, frac, lattice, self.iwavpr)
            note = " bond charge predicted" if self.iwavpr % 10 in (1, 3) else " wavefunctions predicted"
            return guess, note
        if self.restart is not None:
            guess = wavefunction_start(self.restart.bond_charges, self.restart.frac, frac, lattice)
            return guess, " WAVECAR read"
        return cold_start(n), " WAVECAR not read"

    def remember(self, frac: np.ndarray, lattice: np.ndarray, bond_charges: np.ndarray) -> None:
        self.history_frac.append(frac.copy())
        self.history_q.append(bond_charges.copy())
        del self.history_frac[:-3], self.history_q[:-3]
        self.lattice = lattice.copy()
