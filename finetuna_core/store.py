"""Persistence of an online-learning run: parent points and the step log.

* ``parent.extxyz``: every parent point, appended and fsynced the moment it is computed, with the
  query reason and timings in its info (extended XYZ: readable by ASE, and append-only, so a crash
  can at worst lose the line being written).
* ``steps.jsonl``: one JSON line per force call (surrogate or parent, energy, fmax, reason, times).

A run restarted in the same directory reloads the parent points; a force call at a structure
already labelled returns the stored numbers instead of calling the parent again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from .surrogates.base import LabelledPoint

PARENT_FILE = "parent.extxyz"
STEPS_FILE = "steps.jsonl"


def structure_key(atoms: Atoms, decimals: int = 8) -> str:
    """A hash of numbers, cell and positions, rounded so a resumed run finds its own points."""
    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update(np.round(np.asarray(atoms.cell), decimals).tobytes())
    digest.update(np.round(atoms.positions, decimals).tobytes())
    return digest.hexdigest()


@dataclass
class StoredPoint:
    point: LabelledPoint
    reason: str
    info: dict[str, Any]


class RunStore:
    """The files of one run directory. ``directory=None`` keeps everything in memory."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = None if directory is None else Path(directory)
        self.points: list[StoredPoint] = []
        self._index: dict[str, int] = {}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._load()

    # ---------------------------------------------------------------- parent points
    def _load(self) -> None:
        path = self.directory / PARENT_FILE
        if not path.is_file() or path.stat().st_size == 0:
            return
        from ase.io import iread, write

        frames = []
        torn = False
        try:
            for atoms in iread(path, index=":", format="extxyz"):
                frames.append(atoms)
        except Exception:  # noqa: BLE001 - a frame cut short by a crash during the append
            torn = True
        if torn:  # keep the complete frames; the torn one was never acknowledged to anyone
            temporary = path.with_suffix(".tmp")
            write(temporary, frames, format="extxyz")
            temporary.replace(path)
        for atoms in frames:
            energy = float(atoms.calc.results["energy"])
            forces = np.array(atoms.calc.results["forces"])
            info = dict(atoms.info)
            reason = str(info.pop("reason", ""))
            clean = atoms.copy()
            clean.info = {}
            self._remember(StoredPoint(LabelledPoint(clean, energy, forces), reason, info))

    def _remember(self, stored: StoredPoint) -> None:
        self._index[structure_key(stored.point.atoms)] = len(self.points)
        self.points.append(stored)

    def lookup(self, atoms: Atoms) -> StoredPoint | None:
        index = self._index.get(structure_key(atoms))
        return None if index is None else self.points[index]

    def add(self, point: LabelledPoint, reason: str, **info: Any) -> StoredPoint:
        stored = StoredPoint(point, reason, dict(info))
        self._remember(stored)
        if self.directory is not None:
            from ase.io import write

            atoms = point.atoms.copy()
            atoms.info = {"reason": reason, **{k: v for k, v in info.items() if v is not None}}
            atoms.calc = SinglePointCalculator(atoms, energy=point.energy, forces=np.asarray(point.forces))
            path = self.directory / PARENT_FILE
            with open(path, "a") as handle:
                write(handle, atoms, format="extxyz")
                handle.flush()
                os.fsync(handle.fileno())
        return stored

    @property
    def labelled(self) -> list[LabelledPoint]:
        return [stored.point for stored in self.points]

    # ---------------------------------------------------------------- step log
    def log_step(self, record: dict[str, Any]) -> None:
        if self.directory is None:
            return
        with open(self.directory / STEPS_FILE, "a") as handle:
            handle.write(json.dumps(record, default=float) + "\n")

    def steps(self) -> list[dict[str, Any]]:
        if self.directory is None or not (self.directory / STEPS_FILE).is_file():
            return []
        lines = (self.directory / STEPS_FILE).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
