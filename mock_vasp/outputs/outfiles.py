"""Output files shared by all writers: block-buffered files, OSZICAR and the step record."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fortran import SCF_HEADER, energy_line, scf_line
from ..physics.scf import ScfLine

BLOCK_SIZE = 8192


class BlockFile:
    """A text file written as VASP's Fortran runtime does.

    ``sync()`` is called when VASP waits (for stdin, or at the end of an ionic step). Normally it
    writes everything; with ``block_buffered`` it writes only whole 8 KiB blocks, so the newest step
    is missing from the file until more output pushes it out, as in some VASP 5.4.4 builds.
    """

    def __init__(self, path: Path, block_buffered: bool = False):
        self._handle = open(path, "wb")
        self._pending = bytearray()
        self._block_buffered = block_buffered

    def write(self, text: str) -> None:
        self._pending += text.encode("utf-8")

    def sync(self) -> None:
        if self._block_buffered:
            size = len(self._pending) // BLOCK_SIZE * BLOCK_SIZE
        else:
            size = len(self._pending)
        if size:
            self._handle.write(self._pending[:size])
            del self._pending[:size]
            self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.write(self._pending)
            self._pending.clear()
            self._handle.close()


@dataclass
class IonicResult:
    """What one ionic step produced, in VASP's (POSCAR) atom order."""

    step: int
    lattice: np.ndarray
    frac: np.ndarray
    free_energy: float  # TOTEN
    energy_without_entropy: float
    energy_sigma0: float
    forces: np.ndarray
    stress_kb: np.ndarray | None  # XX YY ZZ XY YZ ZX, kB, VASP's sign
    converged: bool
    efermi: float
    de: float  # the "d E" of the F= line
    magnetization: float | None = None
    scf_lines: list[ScfLine] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cartesian(self) -> np.ndarray:
        return self.frac @ self.lattice

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))


class Oszicar:
    """OSZICAR: one line per electronic step, one ``F=`` line per ionic step."""

    def __init__(self, directory: Path, block_buffered: bool):
        self.file = BlockFile(directory / "OSZICAR", block_buffered)

    def begin_step(self) -> None:
        self.file.write(SCF_HEADER + "\n")

    def scf(self, line: ScfLine) -> None:
        self.file.write(
            scf_line(line.algorithm, line.index, line.energy, line.de, line.deps, line.ncg,
                     line.rms, line.rms_charge) + "\n"
        )

    def ionic(self, result: IonicResult) -> None:
        self.file.write(
            energy_line(result.step, result.free_energy, result.energy_sigma0, result.de,
                        result.magnetization) + "\n"
        )


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` at once, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
