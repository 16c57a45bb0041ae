"""Incremental readers of OUTCAR and vasprun.xml for what stdout does not carry (stress).

Each reader remembers its byte offset and parses only what was appended since the last call,
so following a run costs O(new bytes), not O(file) per step. A partial last line (a file flushed
in 8 KiB blocks ends mid-line) is kept until the rest arrives; a file that shrank or was replaced
(VASP restarted) is read from the start again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from ase import Atoms

from .errors import VaspOutputIncomplete
from .outcar import OutcarStep, OutcarSteps, read_outcar_steps, voigt_from_vasp_kb


class _Follower:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self._inode: int | None = None
        self._on_reset()

    def new_lines(self) -> list[str]:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self._inode not in (None, status.st_ino) or status.st_size < self._offset:
            self.reset()
        self._inode = status.st_ino
        if status.st_size == self._offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode(errors="replace") for line in lines]

    def reset(self) -> None:
        self._offset = 0
        self._partial = b""
        self._on_reset()

    def _on_reset(self) -> None:
        pass


class OutcarFollower(_Follower):
    """Stress, energies and the Fermi level of each completed ionic step in OUTCAR.

    Steps are counted as :class:`~vasp_interactive.outcar.OutcarSteps` counts them, so a run with
    VASP's machine-learned force field (an ML and a DFT block for one step) is counted right.
    """

    def _on_reset(self) -> None:
        self.parser = OutcarSteps()
        self.stress: dict[int, np.ndarray] = {}
        self.efermi: dict[int, float] = {}

    @property
    def steps_completed(self) -> int:
        return len(self.parser.steps)

    @property
    def steps(self) -> list[OutcarStep]:
        return self.parser.steps

    def update(self) -> int:
        before = len(self.parser.steps)
        for line in self.new_lines():
            self.parser.feed(line)
        for step in self.parser.steps[max(0, before - 1):]:  # the newest may have gained its DFT block
            result = step.result
            if result.stress is not None:
                self.stress[step.index] = result.stress
            if result.efermi is not None:
                self.efermi[step.index] = result.efermi
        return self.steps_completed


def read_outcar(path: str | os.PathLike) -> list[Atoms]:
    """Every ionic step of an OUTCAR as ASE ``Atoms``, also for runs with VASP's ML force field.

    Each structure carries a single-point calculator with ``energy`` (sigma -> 0), ``free_energy``,
    ``forces`` and ``stress`` (where printed) of the step's result: DFT where DFT ran, else the
    force field's. ``atoms.info``: ``"source"`` (``"dft"`` or ``"ml"``), ``"ml_energy"`` and
    ``"dft_energy"`` (free energies, None where that block is absent), ``"step"``. ASE's own reader
    raises on these files. Atoms are in VASP's (species-sorted) order.
    """
    from ase.calculators.singlepoint import SinglePointDFTCalculator

    parsed = read_outcar_steps(path)
    if not parsed.counts:
        raise VaspOutputIncomplete(f"{path}: no 'ions per type' line; not an OUTCAR, or cut before its header",
                                   directory=str(Path(path).parent))
    symbols = [s for s, n in zip(parsed.species, parsed.counts) for _ in range(n)]
    frames = []
    for step in parsed.steps:
        block = step.result
        if block.positions is None or block.cell is None:
            continue  # an energy block whose structure was cut off
        atoms = Atoms(symbols, positions=block.positions, cell=block.cell, pbc=True)
        atoms.calc = SinglePointDFTCalculator(atoms, energy=block.energy_sigma0, free_energy=block.free_energy,
                                              forces=block.forces, stress=block.stress, efermi=block.efermi)
        atoms.info.update(step=step.index, source=step.source,
                          ml_energy=step.ml.free_energy if step.ml else None,
                          dft_energy=step.dft.free_energy if step.dft else None)
        frames.append(atoms)
    return frames


_V = re.compile(r"<v>\s*(\S+)\s+(\S+)\s+(\S+)\s*</v>")


class VasprunFollower(_Follower):
    """Stress of each completed ``<calculation>`` in vasprun.xml."""

    def _on_reset(self) -> None:
        self.steps_completed = 0
        self.stress: dict[int, np.ndarray] = {}
        self._rows: list[list[float]] | None = None
        self._pending: np.ndarray | None = None

    def update(self) -> int:
        for line in self.new_lines():
            if '<varray name="stress"' in line:
                self._rows = []
            elif self._rows is not None:
                match = _V.search(line)
                if match:
                    self._rows.append([float(x) for x in match.groups()])
                if len(self._rows) == 3 or "</varray>" in line:
                    if len(self._rows) == 3:
                        m = np.array(self._rows)
                        self._pending = voigt_from_vasp_kb(m[0, 0], m[1, 1], m[2, 2], m[0, 1], m[1, 2], m[0, 2])
                    self._rows = None
            elif "</calculation>" in line:
                self.steps_completed += 1
                if self._pending is not None:
                    self.stress[self.steps_completed] = self._pending
                self._pending = None
        return self.steps_completed
