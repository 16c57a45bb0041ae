"""OUTCAR's ionic steps, with and without VASP's machine-learned force field, as a pure line parser.

``OutcarSteps.feed(line)`` takes OUTCAR lines in order and assembles ionic steps; no I/O. An
ordinary step prints one energy block (``FREE ENERGIE OF THE ION-ELECTRON SYSTEM``). With
``ML_LMLFF = .TRUE.`` every step first prints an ML block (``ML FREE ENERGIE ...``, forces marked
``(ML)``, its own stress); a step where VASP also runs DFT then prints the ordinary block. So the
substring "FREE ENERGIE OF THE ION-ELECTRON SYSTEM" matches twice in such a step, and the
``Ionic step`` headers are not where the steps begin (from step 2 on, VASP prints the next
structure's ML block before its header). A step here is: an ML block, optionally followed by
one DFT block; or, in a run without ML, one DFT block.

Markers are matched without regard to letter case: VASP 6.4.1 changed the case of the ML energy
lines, and a driver that waited for the old spelling hung.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ase.units import GPa

from .protocol.decoder import fixed_point_row

ComputedBy = Literal["dft", "ml"]  # who computed an ionic step: DFT, or the ML force field

_KB_TO_EV_A3 = 0.1 * GPa
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?)"
_ML_TOTEN = re.compile(r"free\s+energy\s+ml\s+toten\s*=\s*" + _NUMBER, re.IGNORECASE)
_DFT_TOTEN = re.compile(r"free\s+energy\s+toten\s*=\s*" + _NUMBER, re.IGNORECASE)
_SIGMA0 = re.compile(r"energy\s+without\s+entropy\s*=\s*" + _NUMBER + r"\s+(?:ml\s+)?energy\(sigma->0\)\s*=\s*"
                     + _NUMBER, re.IGNORECASE)


def voigt_from_vasp_kb(xx, yy, zz, xy, yz, zx) -> np.ndarray:
    """VASP's 'in kB' order and sign to ASE's Voigt stress in eV/A^3."""
    return -np.array([xx, yy, zz, yz, zx, xy]) * _KB_TO_EV_A3


@dataclass
class EnergyBlock:
    """One energy block: what VASP printed for one structure by one method."""

    source: ComputedBy
    free_energy: float | None = None
    energy_no_entropy: float | None = None
    energy_sigma0: float | None = None
    stress: np.ndarray | None = None  # ASE Voigt, eV/A^3
    positions: np.ndarray | None = None  # Cartesian, VASP order
    forces: np.ndarray | None = None
    cell: np.ndarray | None = None
    efermi: float | None = None


@dataclass
class OutcarStep:
    """One ionic step: its ML block (if the force field is on) and its DFT block (if DFT ran)."""

    index: int
    ml: EnergyBlock | None = None
    dft: EnergyBlock | None = None

    @property
    def source(self) -> ComputedBy:
        return "dft" if self.dft is not None else "ml"

    @property
    def result(self) -> EnergyBlock:
        """The block that is the step's result: DFT where it ran, else the force field's."""
        block = self.dft if self.dft is not None else self.ml
        assert block is not None
        return block

    @property
    def stress(self) -> np.ndarray | None:
        return self.result.stress


@dataclass
class OutcarSteps:
    """Feeds on OUTCAR lines; ``steps`` grows as energy blocks complete."""

    steps: list[OutcarStep] = field(default_factory=list)
    species: list[str] = field(default_factory=list)  # one per POTCAR (the header prints each twice)
    counts: list[int] = field(default_factory=list)
    ml_seen: bool = False
    _block: EnergyBlock | None = None  # the block whose energy lines are being read
    _stress: np.ndarray | None = None
    _efermi: float | None = None
    _cell: np.ndarray | None = None
    _positions: np.ndarray | None = None
    _forces: np.ndarray | None = None
    _forces_ml: bool = False
    _rows: list[list[float]] | None = None  # the POSITION/TOTAL-FORCE table being read
    _cell_rows: list[list[float]] | None = None
    _potcars: list[str] = field(default_factory=list)

    @property
    def natoms(self) -> int:
        return int(sum(self.counts))

    def feed(self, line: str) -> None:
        if self._rows is not None:
            self._table_row(line)
            return
        if self._cell_rows is not None:
            self._cell_row(line)
            return
        lowered = line.lower()
        if self._block is not None and self._energy_line(line):
            return
        if lowered.startswith("  in kb"):
            try:
                self._stress = voigt_from_vasp_kb(*[float(x) for x in line.split()[2:8]])
            except (TypeError, ValueError):
                self._stress = None
        elif lowered.startswith(" e-fermi :"):
            try:
                self._efermi = float(line.split()[2])
            except (IndexError, ValueError):
                pass
        elif "direct lattice vectors" in lowered and "reciprocal lattice vectors" in lowered:
            self._cell_rows = []
        elif "position" in lowered and "total-force" in lowered:
            self._rows = []
            self._forces_ml = "(ml)" in lowered
        elif "free energie of the ion-electron system" in lowered:
            self._begin_block("ml" if lowered.lstrip().startswith("ml ") else "dft")
        elif lowered.startswith(" potcar:"):
            words = line.split()
            self._potcars.append(words[2] if len(words) >= 3 else words[-1])
        elif "ions per type =" in lowered:
            self.counts = [int(x) for x in line.split("=")[1].split()]
            half = self._potcars[: len(self._potcars) // 2] or self._potcars
            self.species = [name.split("_")[0] for name in half][: len(self.counts)]

    def finish(self) -> None:
        """The file ended: keep a block whose last energy line never came."""
        self._close_block()

    # ------------------------------------------------------------------ pieces
    def _table_row(self, line: str) -> None:
        if line.strip().startswith("---"):
            if self._rows:  # the closing rule
                table = np.array(self._rows)
                self._positions, self._forces = table[:, :3], table[:, 3:6]
                self._rows = None
            return
        try:
            # 3F13.5 positions, 3F14.6 forces; a force VASP could not print is NaN: the step keeps
            # its structure and energy, and a reader sees that the force is unknown
            self._rows.append(fixed_point_row(line, (5, 5, 5, 6, 6, 6), unprintable_as_nan=True))
        except ValueError:
            self._rows = None  # not a table after all

    def _cell_row(self, line: str) -> None:
        try:
            self._cell_rows.append([float(w) for w in line.split()[:3]])
        except ValueError:
            self._cell_rows = None
            return
        if len(self._cell_rows) == 3:
            self._cell = np.array(self._cell_rows)
            self._cell_rows = None

    def _begin_block(self, source: ComputedBy) -> None:
        self._close_block()
        forces_match = self._forces is not None and self._forces_ml == (source == "ml")
        self._block = EnergyBlock(source, stress=self._stress, cell=self._cell, efermi=self._efermi,
                                  positions=self._positions if forces_match else None,
                                  forces=self._forces if forces_match else None)
        self._stress = self._efermi = None
        self._positions = self._forces = None

    def _energy_line(self, line: str) -> bool:
        block = self._block
        pattern = _ML_TOTEN if block.source == "ml" else _DFT_TOTEN
        if match := pattern.search(line):
            block.free_energy = float(match.group(1))
            return True
        if match := _SIGMA0.search(line):
            block.energy_no_entropy, block.energy_sigma0 = float(match.group(1)), float(match.group(2))
            self._close_block()
            return True
        return False

    def _close_block(self) -> None:
        block, self._block = self._block, None
        if block is None or block.free_energy is None:
            return
        if block.source == "ml":
            self.ml_seen = True
            self.steps.append(OutcarStep(len(self.steps) + 1, ml=block))
            return
        current = self.steps[-1] if self.steps else None
        if self.ml_seen and current is not None and current.dft is None:
            current.dft = block  # DFT of the structure the force field just predicted
        else:
            self.steps.append(OutcarStep(len(self.steps) + 1, dft=block))


def read_outcar_steps(path) -> OutcarSteps:
    """Every ionic step of a whole OUTCAR (see :func:`vasp_interactive.outputs.read_outcar`)."""
    parser = OutcarSteps()
    with open(path, errors="replace") as handle:
        for line in handle:
            parser.feed(line.rstrip("\n"))
    parser.finish()
    return parser
