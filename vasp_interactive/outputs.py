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
from ase.units import GPa

_KB_TO_EV_A3 = 0.1 * GPa


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


def _voigt_from_vasp_kb(xx, yy, zz, xy, yz, zx) -> np.ndarray:
    """VASP's 'in kB' order and sign to ASE's Voigt stress in eV/A^3."""
    return -np.array([xx, yy, zz, yz, zx, xy]) * _KB_TO_EV_A3


class OutcarFollower(_Follower):
    """Stress (and the Fermi level) of each completed ionic step in OUTCAR."""

    def _on_reset(self) -> None:
        self.steps_completed = 0
        self.stress: dict[int, np.ndarray] = {}
        self.efermi: dict[int, float] = {}
        self._pending_stress: np.ndarray | None = None
        self._pending_efermi: float | None = None

    def update(self) -> int:
        for line in self.new_lines():
            if line.startswith("  in kB"):
                try:
                    self._pending_stress = _voigt_from_vasp_kb(*[float(x) for x in line.split()[2:8]])
                except (ValueError, TypeError):
                    self._pending_stress = None
            elif line.startswith(" E-fermi :"):
                try:
                    self._pending_efermi = float(line.split()[2])
                except (ValueError, IndexError):
                    pass
            elif "FREE ENERGIE OF THE ION-ELECTRON SYSTEM" in line:
                self.steps_completed += 1
                if self._pending_stress is not None:
                    self.stress[self.steps_completed] = self._pending_stress
                if self._pending_efermi is not None:
                    self.efermi[self.steps_completed] = self._pending_efermi
                self._pending_stress = self._pending_efermi = None
        return self.steps_completed


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
                        self._pending = _voigt_from_vasp_kb(m[0, 0], m[1, 1], m[2, 2], m[0, 1], m[1, 2], m[0, 2])
                    self._rows = None
            elif "</calculation>" in line:
                self.steps_completed += 1
                if self._pending is not None:
                    self.stress[self.steps_completed] = self._pending
                self._pending = None
        return self.steps_completed
